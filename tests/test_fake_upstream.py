"""The test stand-ins for the upstream: demo audio is real WAV, the fake upstream answers as scripted."""

from __future__ import annotations

import io
import socket
import threading
import time
import urllib.error
import urllib.request
import wave

import pytest

from recsvc.demo.audio import sized_wav, tone_wav, tune_for
from recsvc.demo.fake_upstream import FakeUpstream, Script


# -- demo audio ---------------------------------------------------------------

def read_wav(data: bytes) -> wave.Wave_read:
    return wave.open(io.BytesIO(data), "rb")


def test_tone_wav_is_16_bit_mono_pcm_with_one_frame_per_sample():
    data = tone_wav([(440.0, 0.5), (0.0, 0.25), (660.0, 0.25)], rate=8000)
    wav = read_wav(data)
    assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
    assert wav.getnframes() == 8000
    assert len(data) == 44 + 8000 * 2


def test_tone_wav_rest_is_silent_and_notes_are_not():
    wav = read_wav(tone_wav([(0.0, 0.1), (440.0, 0.1)], rate=8000))
    frames = wav.readframes(wav.getnframes())
    rest, note = frames[:1600], frames[1600:]
    assert rest == b"\x00" * 1600
    assert max(abs(int.from_bytes(note[i:i + 2], "little", signed=True)) for i in range(0, 1600, 2)) > 8000


def test_tone_wav_fades_so_each_note_starts_and_ends_near_zero():
    wav = read_wav(tone_wav([(440.0, 0.1)], rate=8000))
    frames = wav.readframes(wav.getnframes())
    first = int.from_bytes(frames[:2], "little", signed=True)
    last = int.from_bytes(frames[-2:], "little", signed=True)
    assert abs(first) < 100 and abs(last) < 100


def test_tune_for_is_the_same_for_a_name_and_differs_between_names():
    assert tune_for("CA1") == tune_for("CA1")
    tunes = {tune_for(f"CA{i}") for i in range(10)}
    assert len(tunes) == 10


def test_tune_for_lasts_the_seconds_asked():
    wav = read_wav(tune_for("CA1", seconds=1.5))
    assert wav.getnframes() == 12000 and wav.getframerate() == 8000


@pytest.mark.parametrize("n_bytes", [44, 45, 100, 1001, 16044, 100_000])
def test_sized_wav_has_exactly_the_size_asked_and_parses(n_bytes):
    data = sized_wav(n_bytes, seed="x")
    assert len(data) == n_bytes
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert read_wav(data).getnframes() == n_bytes - 44


def test_sized_wav_refuses_less_than_a_header():
    with pytest.raises(ValueError):
        sized_wav(43)


# -- fake upstream ------------------------------------------------------------

@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


def fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0, method: str = "GET"):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch_in_thread(url: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["answer"] = fetch(url, timeout=5.0)
        except Exception as exc:  # the connection closed without an answer, say
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_base_url_is_loopback_with_the_bound_port(upstream):
    assert upstream.base_url.startswith("http://127.0.0.1:")
    assert int(upstream.base_url.rsplit(":", 1)[1]) > 0
    assert upstream.url("/rec/CA1.wav") == upstream.base_url + "/rec/CA1.wav"


def test_scripted_path_answers_its_status_body_and_content_type(upstream):
    audio = tune_for("CA1")
    url = upstream.set("/rec/CA1.wav", body=audio)
    status, headers, body = fetch(url)
    assert status == 200
    assert body == audio
    assert headers["Content-Type"] == "audio/wav"
    assert headers["Content-Length"] == str(len(audio))


def test_scripted_error_status_and_html_body(upstream):
    url = upstream.set("/rec/gone", status=410, body=b"<html>gone</html>", content_type="text/html")
    status, headers, body = fetch(url)
    assert (status, headers["Content-Type"], body) == (410, "text/html", b"<html>gone</html>")


def test_unscripted_path_answers_404_with_a_small_body(upstream):
    status, _, body = fetch(upstream.url("/nothing/here"))
    assert status == 404
    assert 0 < len(body) < 100


def test_script_headers_are_sent_and_override_defaults(upstream):
    target = upstream.set("/final.wav", body=b"RIFF")
    url = upstream.set("/moved", status=302, headers={"Location": target, "content-type": "text/plain"})
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(url, timeout=5)
    with raised.value as answer:
        assert answer.code == 302
        assert answer.headers["Location"] == target
        assert answer.headers.get_all("Content-Type") == ["text/plain"]


def test_set_with_a_script_and_fields_replaces_those_fields(upstream):
    base = Script(body=b"abc", content_type="audio/mpeg")
    url = upstream.set("/a.mp3", base, status=503)
    status, headers, body = fetch(url)
    assert (status, headers["Content-Type"], body) == (503, "audio/mpeg", b"abc")
    assert base.status == 200


def test_head_answers_headers_without_a_body(upstream):
    url = upstream.set("/rec.wav", body=b"x" * 100)
    status, headers, body = fetch(url, method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "100", b"")


def test_delay_holds_the_status_line(upstream):
    url = upstream.set("/slow-start", body=b"ok", delay=0.3)
    started = time.monotonic()
    status, _, _ = fetch(url)
    assert status == 200
    assert time.monotonic() - started >= 0.3


def test_chunk_delay_makes_a_slow_download_of_the_whole_body(upstream):
    body = bytes(range(256)) * 4
    url = upstream.set("/trickle", body=body, chunk_size=256, chunk_delay=0.1)
    started = time.monotonic()
    status, _, received = fetch(url)
    elapsed = time.monotonic() - started
    assert (status, received) == (200, body)
    assert 0.3 <= elapsed < 2.0      # 4 chunks, 3 pauses between them


def test_hang_answers_nothing_until_release_then_its_script(upstream):
    url = upstream.set("/stuck", body=b"late", hang=True)
    thread, result = fetch_in_thread(url)
    assert upstream.wait_for_hits("/stuck", 1)
    thread.join(0.3)
    assert thread.is_alive() and not result
    upstream.release()
    thread.join(2)
    assert result["answer"][0] == 200 and result["answer"][2] == b"late"


def test_release_frees_only_requests_already_hung(upstream):
    url = upstream.set("/stuck", body=b"late", hang=True)
    upstream.release()
    thread, result = fetch_in_thread(url)
    assert upstream.wait_for_hits("/stuck", 1)
    thread.join(0.3)
    assert thread.is_alive()
    upstream.release()
    thread.join(2)
    assert result["answer"][0] == 200


def test_hang_all_hangs_every_path_and_turning_it_off_answers_their_scripts(upstream):
    url = upstream.set("/rec/CA1.wav", body=b"audio")
    upstream.hang_all = True
    assert upstream.hang_all is True
    scripted = fetch_in_thread(url)
    unscripted = fetch_in_thread(upstream.url("/nowhere"))
    assert upstream.wait_for_hits("/rec/CA1.wav", 1) and upstream.wait_for_hits("/nowhere", 1)
    time.sleep(0.2)
    assert scripted[0].is_alive() and unscripted[0].is_alive()

    upstream.hang_all = False
    scripted[0].join(2)
    unscripted[0].join(2)
    assert scripted[1]["answer"][0] == 200 and scripted[1]["answer"][2] == b"audio"
    assert unscripted[1]["answer"][0] == 404
    assert fetch(url)[0] == 200     # and new requests no longer hang


def test_hits_counts_every_request_under_concurrency(upstream):
    url = upstream.set("/popular", body=b"x")
    threads = [threading.Thread(target=fetch, args=(url,)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert upstream.hits("/popular") == 20
    assert upstream.hits("/never") == 0


def test_wait_for_hits_gives_up_after_its_timeout(upstream):
    started = time.monotonic()
    assert upstream.wait_for_hits("/never", 1, timeout=0.2) is False
    assert 0.2 <= time.monotonic() - started < 1.0


def test_requests_records_method_and_authorization_header(upstream):
    url = upstream.set("/private.wav", body=b"x")
    fetch(url + "?Download=true", headers={"Authorization": "Basic QUM6dG9rZW4="})
    [recorded] = upstream.requests("/private.wav")
    assert recorded["method"] == "GET"
    assert recorded["target"] == "/private.wav?Download=true"
    assert recorded["headers"]["Authorization"] == "Basic QUM6dG9rZW4="


def test_stop_with_hung_and_slow_requests_returns_promptly_and_closes_them():
    server = FakeUpstream().start()
    hung_url = server.set("/stuck", hang=True)
    slow_url = server.set("/trickle", body=b"x" * 100, chunk_size=1, chunk_delay=1.0)
    hung, hung_result = fetch_in_thread(hung_url)
    slow, slow_result = fetch_in_thread(slow_url)
    assert server.wait_for_hits("/stuck", 1) and server.wait_for_hits("/trickle", 1)

    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5
    hung.join(2)
    slow.join(2)
    assert "error" in hung_result       # closed with no answer
    assert not slow.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])), timeout=1).close()


def test_stop_is_idempotent_and_works_without_start():
    FakeUpstream().stop()
    server = FakeUpstream().start()
    server.stop()
    server.stop()
