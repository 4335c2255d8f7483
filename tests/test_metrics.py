"""/metrics (CONTRACT 6): valid Prometheus text, and its numbers move when requests and jobs happen.

The parser below is deliberately strict: it refuses what a Prometheus
scraper would refuse, and also what the text format allows but recsvc
promises not to do (a sample without HELP and TYPE, a counter not named
``_total``).
"""

from __future__ import annotations

import math
import re

import pytest

from recsvc.demo.audio import sized_wav

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^\n]*\})? ([^ ]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def parse_value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text), f"bad sample value {text!r}"
    return float(text)


def parse_labels(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    inner = text[1:-1]
    labels, position = [], 0
    while position < len(inner):
        found = LABEL.match(inner, position)
        assert found, f"bad label syntax at {inner[position:]!r}"
        labels.append((found.group(1), found.group(2)))
        position = found.end()
        if position < len(inner):
            assert inner[position] == ",", f"labels must be separated by commas: {inner!r}"
            position += 1
    names = [name for name, _ in labels]
    assert len(names) == len(set(names)), f"a label is repeated: {inner!r}"
    return tuple(labels)


def parse_metrics(text: str) -> dict[str, dict]:
    """Families by name: {"type", "help", "samples": [(name, labels, value)]}."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict] = {}
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert NAME.fullmatch(name), name
            assert name not in families or "help" not in families[name], f"HELP of {name} repeated"
            families.setdefault(name, {"samples": []})["help"] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            family = families.get(name)
            assert family is not None and "help" in family, f"TYPE of {name} before its HELP"
            assert "type" not in family and not family["samples"], f"TYPE of {name} repeated or late"
            family["type"] = kind
            continue
        assert not line.startswith("#"), f"unexpected comment {line!r}"
        found = SAMPLE.fullmatch(line)
        assert found, f"bad sample line {line!r}"
        name, labels, value = found.group(1), parse_labels(found.group(2)), parse_value(found.group(3))
        family_name = name
        if name not in families:
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in families:
                    family_name = name[: -len(suffix)]
        family = families.get(family_name)
        assert family is not None and "help" in family and "type" in family, f"{name} has no HELP and TYPE"
        if family["type"] == "histogram":
            assert name != family_name, f"a histogram sample must be _bucket, _sum or _count: {name}"
        family["samples"].append((name, labels, value))
    for name, family in families.items():
        assert "type" in family, f"{name} has HELP but no TYPE"
        if family["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
            assert all(v >= 0 for _, _, v in family["samples"]), name
        if family["type"] == "histogram":
            check_histogram(name, family["samples"])
    return families


def check_histogram(name: str, samples: list) -> None:
    series: dict[tuple, dict] = {}
    for sample_name, labels, value in samples:
        key = tuple(pair for pair in labels if pair[0] != "le")
        entry = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sample_name == name + "_bucket":
            le = dict(labels).get("le")
            assert le is not None, f"{name}_bucket without le"
            entry["buckets"].append((parse_value(le), value))
        elif sample_name == name + "_sum":
            entry["sum"] = value
        else:
            entry["count"] = value
    for key, entry in series.items():
        bounds = [le for le, _ in entry["buckets"]]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), f"{name}{key}: le not increasing"
        assert bounds and math.isinf(bounds[-1]), f"{name}{key}: no +Inf bucket"
        counts = [count for _, count in entry["buckets"]]
        assert counts == sorted(counts), f"{name}{key}: buckets are not cumulative"
        assert entry["count"] == counts[-1], f"{name}{key}: +Inf bucket {counts[-1]} != _count {entry['count']}"
        assert entry["sum"] is not None, f"{name}{key}: no _sum"


def value(families: dict, name: str, **labels) -> float:
    """The one sample of ``name`` whose labels include ``labels``; 0 when there is none."""
    family = families.get(name) or next(f for n, f in families.items() if name.startswith(n))
    found = [v for n, l, v in family["samples"] if n == name and set(labels.items()) <= set(l)]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else 0


def scrape(svc) -> dict:
    answer = svc.request("GET", "/metrics")
    assert answer.status == 200
    assert answer.header("content-type").startswith("text/plain; version=0.0.4")
    return parse_metrics(answer.body.decode("utf-8"))


# ---------------------------------------------------------------- the parser refuses what it should


@pytest.mark.parametrize("text", [
    pytest.param("x_total 1\n", id="sample-without-help-and-type"),
    pytest.param("# HELP x_total h\n# TYPE x_total counter\nx_total{a=b} 1\n", id="unquoted-label"),
    pytest.param("# HELP x h\n# TYPE x counter\nx 1\n", id="counter-without-_total"),
    pytest.param("# HELP 1x h\n# TYPE 1x gauge\n1x 1\n", id="bad-name"),
    pytest.param("# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                 id="buckets-not-cumulative"),
    pytest.param("# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", id="inf-not-count"),
])
def test_the_strict_parser_refuses_broken_exposition(text):
    with pytest.raises(AssertionError):
        parse_metrics(text)


# ---------------------------------------------------------------- recsvc's /metrics


def test_metrics_is_valid_prometheus_text_with_every_family_of_contract_6(svc):
    families = scrape(svc)
    expected = {
        "recsvc_http_requests_total": "counter",
        "recsvc_http_request_duration_seconds": "histogram",
        "recsvc_jobs": "gauge",
        "recsvc_stuck_jobs_total": "counter",
        "recsvc_fail_fast_trips_total": "counter",
        "recsvc_queue_depth": "gauge",
        "recsvc_live_workers": "gauge",
        "recsvc_cache_bytes": "gauge",
        "recsvc_job_duration_seconds": "histogram",
        "recsvc_http_connections": "gauge",
        "recsvc_held_requests": "gauge",
    }
    for name, kind in expected.items():
        assert families[name]["type"] == kind, name


def test_known_reasons_and_errors_are_shown_at_zero_before_they_happen(svc):
    families = scrape(svc)
    for reason in ("queued", "running", "no_started_at", "heartbeat_lost"):
        assert value(families, "recsvc_stuck_jobs_total", reason=reason) == 0
        assert any(dict(l).get("reason") == reason for _, l, _ in families["recsvc_stuck_jobs_total"]["samples"])
    errors = {dict(l)["error"] for _, l, _ in families["recsvc_fail_fast_trips_total"]["samples"]}
    assert errors == {"worker_not_processing_queue", "recording_download_failed"}
    for status in ("queued", "running", "completed", "failed"):
        assert any(dict(l).get("status") == status for _, l, _ in families["recsvc_jobs"]["samples"])


def test_requests_and_a_finished_job_move_the_counters(svc, upstream):
    token = svc.business()
    audio = sized_wav(4096, "metrics")
    svc.put_call(token, "CAmetrics", upstream.set("/metrics.wav", body=audio))
    before = scrape(svc)
    assert svc.play(token, "CAmetrics").status == 202
    svc.wait_for_job("CAmetrics")
    assert svc.play(token, "CAmetrics").status == 200
    assert svc.request("GET", "/no/such/path").status == 404
    after = scrape(svc)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("recsvc_http_requests_total", route="recording_file", status="202") == 1
    assert moved("recsvc_http_requests_total", route="recording_file", status="200") == 1
    assert moved("recsvc_http_requests_total", route="unknown", status="404") == 1
    assert moved("recsvc_http_request_duration_seconds_count", route="recording_file", method="GET", status="200") == 1
    assert value(after, "recsvc_http_requests_total", route="metrics", status="200") >= 1
    assert value(after, "recsvc_jobs", status="completed") == 1
    assert value(after, "recsvc_queue_depth") == 0
    assert value(after, "recsvc_live_workers") == 1
    assert value(after, "recsvc_cache_bytes") == len(audio)
    assert moved("recsvc_jobs_finished_total", status="completed") == 1
    assert moved("recsvc_job_duration_seconds_count") == 1
    assert value(after, "process_resident_memory_bytes") > 0


def test_a_stuck_job_and_a_fail_fast_trip_are_counted_by_reason_and_error(make_harness, upstream):
    svc = make_harness(job_timeout=5, max_retry_attempts=0)
    token = svc.business()
    svc.put_call(token, "CAstuck", upstream.set("/hang.wav", hang=True))
    assert svc.play(token, "CAstuck").status == 202
    assert upstream.wait_for_hits("/hang.wav", 1)
    assert value(scrape(svc), "recsvc_jobs", status="running") == 1
    svc.advance(6)
    assert svc.app.service.cleanup() == 1
    assert svc.play(token, "CAstuck").status == 500  # no retry allowed: fail fast
    families = scrape(svc)
    assert value(families, "recsvc_stuck_jobs_total", reason="running") == 1
    assert value(families, "recsvc_fail_fast_trips_total", error="worker_not_processing_queue") == 1
    assert value(families, "recsvc_jobs", status="failed") == 1
