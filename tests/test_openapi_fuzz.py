"""A property-based fuzz of every route and method, driven by /openapi.json (CONTRACT 6).

The document served by a running recsvc is the only description used: for
each operation, requests are built from its parameters' and body's schemas,
mostly valid, often hostile (huge or non-ASCII-digit ids, wrong types,
missing fields, too long strings, more than 20 query fields, wrong
credentials), and every method the path does not take is tried too. Each
answer must be one the document declares: its status is listed for the
operation (or is a transport error listed under ``default`` with that
status), its error code is one that response lists, its body matches the
response's schema, and no answer is a 5xx the operation does not declare.

Seeded and bounded: RECSVC_FUZZ_SEED picks the inputs, RECSVC_OPENAPI_FUZZ_INPUTS
their count, and the run stops at FUZZ_SECONDS whatever the count.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import string
import time
import urllib.parse

import pytest
from conftest import ADMIN_TOKEN
from schema_check import problems, resolve

from recsvc.demo.audio import sized_wav
from recsvc.http.openapi import ERROR_CODES, openapi_document

SEED = int(os.environ.get("RECSVC_FUZZ_SEED", "6006"))
INPUTS = int(os.environ.get("RECSVC_OPENAPI_FUZZ_INPUTS", "4000"))
FUZZ_SECONDS = 20.0
METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
LARGEST_ID = 2**63 - 1

# Values that break or stretch a schema: ids past 2^63-1, digits that are not ASCII, blanks,
# control characters, wrong JSON types, over-long strings.
HOSTILE = ["", " ", "0", "-1", "00", str(LARGEST_ID), str(LARGEST_ID + 1), "9" * 30, "9" * 400, "1.5", "1e3", "0x10",
           "\u0661", "\uff11", "\u00b2", "1\u0660", "%00", "%", "..", "../..", "a/b", "\x00", "\u00e9", "\ud7ff",
           "a" * 65, "a" * 300, "x" * 5000, "null", "true", "[]", "{}", "wait=99999999999", "bytes=5-1", "AC" + "0" * 31]
HOSTILE_DIGITS = ["0", "00", "-1", "+1", "1.0", " 1", str(LARGEST_ID + 1), "9" * 20, "9" * 400, "\u0661", "\uff11",
                  "\u00b2", "1\u0660", "1e3", "0x10", ""]
HOSTILE_JSON = [None, True, False, 0, -1, 1.5, 2**63, 2**70, "", "a" * 3000, [], {}, [1, 2], {"a": 1}]
DIGITS_PATTERNS = ("^[0-9]+$", "^[0-9]*$")
TEMPLATE_PARAM = re.compile(r"\{(\w+)\}")


def template_regex(template: str) -> re.Pattern:
    return re.compile("^" + TEMPLATE_PARAM.sub(r"[^/]*", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
                      + "$")


class Generator:
    """Values for one schema: ``valid`` most of the time, ``hostile`` on purpose."""

    def __init__(self, rng: random.Random, document: dict, known: dict):
        self.rng = rng
        self.document = document
        self.known = known  # name -> list of values that name something that exists

    def text(self, low: int = 1, high: int = 12) -> str:
        return "".join(self.rng.choice(string.ascii_letters + string.digits) for _ in range(self.rng.randint(low, high)))

    def string(self, schema: dict, name: str) -> str:
        pattern = schema.get("pattern", "")
        if name in self.known and self.rng.random() < 0.7:
            return str(self.rng.choice(self.known[name]))
        if pattern in ("^[A-Za-z0-9_-]{1,64}$", "^([A-Za-z0-9_-]{1,64})?$"):
            return "".join(self.rng.choice(string.ascii_letters + string.digits + "_-")
                           for _ in range(self.rng.choice([1, 5, 34, 64])))
        if pattern in DIGITS_PATTERNS:
            return str(self.rng.choice([1, 2, 3, self.rng.randint(1, LARGEST_ID)]))
        if pattern.startswith("^AC"):
            return "AC" + "".join(self.rng.choice("0123456789abcdefABCDEF") for _ in range(32))
        if pattern == "wait=[0-9]+":
            return f"wait={self.rng.choice([0, 1])}"
        if pattern == "^[0-9a-f]+$":
            return "".join(self.rng.choice("0123456789abcdef") for _ in range(64))
        low = schema.get("minLength", 1)
        return self.text(low, max(low, min(schema.get("maxLength", 24), 24)))

    def valid(self, schema: dict, name: str = ""):
        schema = resolve(schema, self.document)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        if "oneOf" in schema:
            return self.valid(self.rng.choice(schema["oneOf"]), name)
        kinds = schema.get("type", "string")
        kind = self.rng.choice([k for k in kinds if k != "null"] or ["null"]) if isinstance(kinds, list) else kinds
        if kind == "object":
            properties = schema.get("properties", {})
            chosen = set(schema.get("required", [])) | {p for p in properties if self.rng.random() < 0.5}
            return {key: self.valid(properties[key], key) for key in sorted(chosen)}
        if kind == "array":
            return [self.valid(schema.get("items", {}), name) for _ in range(self.rng.randint(0, 2))]
        if kind == "integer":
            return self.rng.randint(schema.get("minimum", 0), schema.get("minimum", 0) + 1000)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, name)

    def value(self, schema: dict, name: str = "", hostile_share: float = 0.12):
        """A valid value, or a hostile one: of the wrong type, too long, or simply strange."""
        if self.rng.random() >= hostile_share:
            return self.valid(schema, name)
        schema = resolve(schema, self.document)
        if "maxLength" in schema and self.rng.random() < 0.3:
            return "x" * (schema["maxLength"] + 1)
        if "minLength" in schema and schema["minLength"] > 1 and self.rng.random() < 0.3:
            return "x" * (schema["minLength"] - 1)
        return self.rng.choice(HOSTILE_JSON + HOSTILE)

    def hostile_text(self, schema: dict | None = None) -> str:
        """A strange string; for a digits-only parameter, mostly a number that is not one."""
        if schema is not None and schema.get("pattern") in DIGITS_PATTERNS and self.rng.random() < 0.7:
            return self.rng.choice(HOSTILE_DIGITS)
        return self.rng.choice(HOSTILE)

    def body(self, schema: dict):
        """A JSON body: an object built from the schema, then perhaps broken."""
        schema = resolve(schema, self.document)
        properties = schema.get("properties", {})
        payload = {key: self.value(properties[key], key) for key in sorted(
            set(schema.get("required", [])) | {p for p in properties if self.rng.random() < 0.5})}
        roll = self.rng.random()
        if roll < 0.1 and payload:
            payload.pop(self.rng.choice(sorted(payload)))  # a required field missing, perhaps
        elif roll < 0.2:
            payload[self.text()] = self.rng.choice(HOSTILE_JSON)  # a field nobody asked for
        elif roll < 0.25:
            return self.rng.choice(HOSTILE_JSON)  # not an object at all
        return payload


class Fuzzer:
    def __init__(self, rng: random.Random, document: dict, tokens: dict, known: dict):
        self.rng = rng
        self.document = document
        self.tokens = tokens
        self.gen = Generator(rng, document, known)
        components = document["components"]["parameters"]
        self.parameters = {name: spec for name, spec in components.items()}
        self.templates = [(template, template_regex(template), item) for template, item in document["paths"].items()]

    def credentials(self, security: list) -> str | None:
        schemes = {name for requirement in security for name in requirement}
        roll = self.rng.random()
        if roll < 0.1:
            return self.rng.choice(["wrong-token-0123456789", "rs_" + "A" * 43, "-dash", "\u00e9"])
        if roll < 0.15:
            return None
        if "adminBearer" in schemes:
            return self.tokens["admin"]
        if "businessBearer" in schemes:
            return self.tokens["business"] if roll < 0.9 else self.tokens["admin"]
        return self.tokens["business"] if roll < 0.2 else None

    def request(self, template: str, method: str, operation: dict | None) -> dict:
        """One request for ``operation`` (None: a method the path does not take)."""
        parameters = [resolve(p, self.document) for p in (operation or {}).get("parameters", [])]
        for p in parameters:
            assert p["name"] != "" and p["in"] in ("path", "query", "header"), p
        path = template
        for name in TEMPLATE_PARAM.findall(template):
            spec = next((p for p in parameters if p["in"] == "path" and p["name"] == name), {"schema": {}})
            value = self.gen.valid(spec["schema"], name) if self.rng.random() < 0.75 else self.gen.hostile_text(spec["schema"])
            path = path.replace("{" + name + "}", urllib.parse.quote(str(value), safe=""), 1)
        query = []
        for p in parameters:
            if p["in"] == "query" and self.rng.random() < 0.5:
                value = self.gen.valid(p["schema"], p["name"]) if self.rng.random() < 0.6 else self.gen.hostile_text(p["schema"])
                query.append((p["name"], str(value)))
        if self.rng.random() < 0.05:
            query += [(f"junk{index}", "1") for index in range(self.rng.choice([19, 20, 21, 40]))]
        if query:
            path += "?" + urllib.parse.urlencode(query)
        headers = {}
        for p in parameters:
            if p["in"] == "header" and self.rng.random() < 0.4:
                value = self.gen.valid(p["schema"], p["name"]) if self.rng.random() < 0.7 else self.gen.hostile_text()
                headers[p["name"]] = str(value).encode("latin-1", "replace").decode("latin-1").replace("\x00", "")
        token = self.credentials((operation or {}).get("security", []))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = None
        content = ((operation or {}).get("requestBody") or {}).get("content", {})
        if "application/json" in content:
            body = json.dumps(self.gen.body(content["application/json"]["schema"])).encode()
            if self.rng.random() < 0.05:
                body = self.rng.choice([b"{", b"\xff\xfe", b"", b"[1,", b"null", b"[" * 60000])
            headers["Content-Type"] = "application/json"
        elif "application/x-www-form-urlencoded" in content:
            schema = resolve(content["application/x-www-form-urlencoded"]["schema"], self.document)
            form = self.gen.body(schema)
            body = urllib.parse.urlencode(form if isinstance(form, dict) else {"x": form}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif method in ("post", "put", "patch") and self.rng.random() < 0.3:
            body = b'{"unexpected": true}'
        return {"method": method.upper(), "path": path, "headers": headers, "body": body}

    def operation_for(self, method: str, concrete_path: str) -> dict | None:
        """The operation that answers: the first path template (in the document's order, which is
        the route table's) that matches the path and has the method; None when none has it."""
        raw = concrete_path.partition("?")[0]
        return next((item[method.lower()] for _, regex, item in self.templates
                     if regex.match(raw) and method.lower() in item), None)

    def allowed(self, concrete_path: str) -> set[str]:
        """Every method the document gives to any path template that this path matches."""
        raw = concrete_path.partition("?")[0]
        return {method.upper() for template, regex, item in self.templates if regex.match(raw) for method in item}


def judge(document: dict, fuzzer: Fuzzer, sent: dict, operation: dict | None, status: int, headers: dict,
          body: bytes) -> list[str]:
    """Where the answer breaks the document; empty when it is one the document declares."""
    transport = resolve(document["components"]["responses"]["TransportError"], document)
    found = []
    error = None
    media = headers.get("content-type", "").split(";")[0].strip()
    if media == "application/json" and body:
        try:
            payload = json.loads(body)
        except ValueError:
            return [f"{status}: a JSON content type with a body that is not JSON: {body[:100]!r}"]
        error = payload.get("error") if isinstance(payload, dict) else None
    else:
        payload = None
    if b"Traceback" in body:
        found.append("a traceback in the body")
    if error == "internal_error":
        found.append("500 internal_error")
    responses = (operation or {}).get("responses", {})
    spec = responses.get(str(status))
    is_transport = error in transport["x-error-codes"] and ERROR_CODES[error][0] == status
    if operation is None:  # a method the path does not take
        if status != 405 or error != "method_not_allowed" and sent["method"] != "HEAD":
            # an admin path without the admin surface, or a transport error (a request line over 8 KiB is 414
            # before any route is looked at)
            if not (status == 404 and error == "not_found" or is_transport and status < 500):
                found.append(f"{status} {error} for a method the path does not take (want 405)")
        elif {m.strip() for m in headers.get("allow", "").split(",")} != fuzzer.allowed(sent["path"]):
            found.append(f"Allow {headers.get('allow')!r}, the document says {sorted(fuzzer.allowed(sent['path']))}")
        return found
    if spec is None or (error is not None and error not in spec.get("x-error-codes", [error])):
        if not is_transport:
            found.append(f"{status} {error!r} is not declared for this operation")
            return found
        spec = transport
    if status >= 500 and str(status) not in responses:
        found.append(f"an undeclared {status}")
    if sent["method"] == "HEAD" or status in (204, 304):
        return found
    content = spec.get("content")
    if content is None:
        return found
    if media not in content:
        return found + [f"{status}: content type {media!r}, the document says {sorted(content)}"]
    if payload is not None or media == "application/json":
        found += problems(payload, content[media]["schema"], document)
    return found


@pytest.fixture
def fuzzed(make_harness, upstream):
    svc = make_harness(workers=1, max_wait=1.0, idle_timeout=2.0)
    admin = svc.admin("POST", "/admin/businesses", {"name": "fuzz"})
    token = admin.json["token"]
    upstream.set("/fuzz.wav", body=sized_wav(4000, seed="fuzz"))
    for sid in ("CAFUZZ", "file", "link"):
        assert svc.put_call(token, sid, upstream.url("/fuzz.wav")).status == 201
    svc.put_call(token, "CANOURL", None)
    other = svc.admin("POST", "/admin/businesses", {"name": "other"}).json["id"]
    account = "AC" + "f" * 32  # the fuzz's business has it: the other one asking for it is a 409
    assert svc.admin("PUT", f"/admin/businesses/{admin.json['id']}/twilio",
                     {"account_sid": account, "auth_token": "fuzz-auth-token"}).status == 200
    known = {"call_sid": ["CAFUZZ", "file", "link", "CANOURL"], "business_id": [admin.json["id"], other],
             "account_sid": [account], "recording_url": [upstream.url("/fuzz.wav"), upstream.url("/missing.wav"), None]}
    return svc, {"admin": ADMIN_TOKEN, "business": token}, known


def test_every_route_and_method_answers_as_openapi_json_declares(fuzzed):
    svc, tokens, known = fuzzed
    served = svc.request("GET", "/openapi.json")
    assert served.status == 200
    document = served.json
    assert document == openapi_document()
    rng = random.Random(SEED)
    fuzzer = Fuzzer(rng, document, tokens, known)
    # Each operation four times, each method a path does not take once.
    plan = [(template, method, item.get(method)) for template, item in document["paths"].items() for method in METHODS
            for _ in range(4 if method in item else 1)]
    host, port = svc.app.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    tried = 0
    started = time.monotonic()
    while tried < INPUTS and time.monotonic() - started < FUZZ_SECONDS:
        template, method, operation = plan[tried % len(plan)]
        tried += 1
        sent = fuzzer.request(template, method, operation)
        operation = fuzzer.operation_for(sent["method"], sent["path"])  # "file" may be a call_sid
        try:
            conn.request(sent["method"], sent["path"], body=sent["body"], headers=sent["headers"])
            answer = conn.getresponse()
            body = answer.read()
        except (http.client.HTTPException, OSError) as exc:
            failures.append(f"{sent['method']} {sent['path'][:120]}: no answer ({exc!r})")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
            continue
        if answer.will_close:
            conn.close()
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        headers = {name.lower(): value for name, value in answer.getheaders()}
        for problem in judge(document, fuzzer, sent, operation, answer.status, headers, body):
            failures.append(f"{sent['method']} {sent['path'][:120]} {sent['body'][:80] if sent['body'] else b''!r}: "
                            f"{problem}: {body[:160]!r}")
    conn.close()
    print(f"\nopenapi fuzz (seed {SEED}): {tried} requests over {len(plan)} route-methods in "
          f"{time.monotonic() - started:.1f}s; answers by status {dict(sorted(statuses.items()))}")
    assert tried >= min(INPUTS, 4 * len(plan)), f"only {tried} requests in {FUZZ_SECONDS}s"
    assert not failures, f"{len(failures)} answers the document does not declare:\n" + "\n".join(failures[:20])
    assert len([s for s in statuses if 200 <= s < 300]) >= 3, "the fuzz never got past the input checks"


def test_the_checker_refuses_what_the_document_does_not_declare():
    document = openapi_document()
    fuzzer = Fuzzer(random.Random(0), document, {"admin": "a", "business": "b"}, {})
    jobs = document["paths"]["/admin/jobs"]["get"]
    sent = {"method": "GET", "path": "/admin/jobs", "headers": {}, "body": None}
    json_type = {"content-type": "application/json"}

    def verdict(status, payload):
        return judge(document, fuzzer, sent, jobs, status, json_type, json.dumps(payload).encode())

    assert verdict(200, {"jobs": []}) == []
    assert verdict(400, {"error": "invalid_request", "message": "m"}) == []
    assert verdict(400, {"error": "bad_request", "message": "m"}) == []  # a transport error, on any operation
    assert verdict(500, {"error": "internal_error", "message": "m"})
    assert verdict(409, {"error": "twilio_account_taken", "message": "m"}), "409 is not declared for listJobs"
    assert verdict(400, {"error": "call_not_found", "message": "m"}), "a code of another status"
    assert verdict(200, {"jobs": [{"id": "1"}]}), "a job without its fields"
    assert verdict(200, {}), "no jobs field"
    put_call = document["paths"]["/api/calls/{call_sid}"]["put"]
    sent_put = {"method": "PUT", "path": "/api/recordings/file/link", "headers": {}, "body": None}
    assert judge(document, fuzzer, sent_put, None, 405, {**json_type, "allow": "GET, HEAD, POST"},
                 b'{"error": "method_not_allowed", "message": "m"}') == []
    assert judge(document, fuzzer, sent_put, None, 405, {**json_type, "allow": "GET, HEAD"},
                 b'{"error": "method_not_allowed", "message": "m"}'), "Allow must name every matching route"
    assert judge(document, fuzzer, sent_put, None, 414, json_type,
                 b'{"error": "uri_too_long", "message": "m"}') == [], "a transport error comes before routing"
    assert judge(document, fuzzer, sent_put, None, 400, json_type,
                 b'{"error": "invalid_request", "message": "m"}'), "only 405 or a transport error"
    assert judge(document, fuzzer, sent_put, put_call, 503, json_type,
                 b'{"error": "storage_busy", "message": "m"}'), "an undeclared 5xx"
