"""Signed links for ``<audio src>``, which cannot send an Authorization header (CONTRACT 6).

A link is ``/api/recordings/file/{call_sid}?exp=<unix>&sig=<hex>`` where
``sig`` is HMAC-SHA256 over the business id, the call_sid and the expiry,
keyed by a secret that is generated once into the data dir (file mode
0600) unless ``RECSVC_LINK_SECRET`` is set. Verification recomputes the
signature and compares in constant time; a bad, expired or altered link is
answered exactly like a missing credential (401).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import urllib.parse

from ..storage.private_files import PRIVATE_FILE

LINK_LIFETIME = 15 * 60
SECRET_FILE = "link-secret"


def load_secret(data_dir: str, environ: dict | None = None) -> bytes:
    environ = os.environ if environ is None else environ
    configured = environ.get("RECSVC_LINK_SECRET")
    if configured:
        return configured.encode("utf-8")
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        with open(path, "rb") as handle:
            os.fchmod(handle.fileno(), PRIVATE_FILE)  # CONTRACT 6: whatever an older copy left
            secret = handle.read().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode("ascii")
    temp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, PRIVATE_FILE)
        handle.write(secret)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temp, path)  # first writer wins when two processes start together
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
    with open(path, "rb") as handle:
        return handle.read().strip()


class LinkSigner:
    def __init__(self, secret: bytes):
        self._secret = secret

    def signature(self, business_id: int, call_sid: str, expires: int) -> str:
        message = f"{business_id}\n{call_sid}\n{expires}".encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def link(self, business_id: int, call_sid: str, now: float) -> tuple[str, int]:
        expires = int(now) + LINK_LIFETIME
        sig = self.signature(business_id, call_sid, expires)
        return f"/api/recordings/file/{call_sid}?exp={expires}&sig={sig}", expires

    def verify(self, query: str, call_sid: str, now: float, candidates: list[int]) -> int | None:
        """The business the link was signed for, or None when it is not a valid, current link.

        The link names its business only through the signature, so each
        business that has a call of this call_sid is tried (usually one);
        at least one HMAC is always computed so that a call that exists
        nowhere costs the same as one that exists elsewhere.
        """
        try:
            fields = urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=20)
        except ValueError:  # more fields than any link has
            return None
        exp, sig = fields.get("exp", []), fields.get("sig", [])
        if len(exp) != 1 or len(sig) != 1 or not (exp[0].isascii() and exp[0].isdigit()) or len(exp[0]) > 12:
            return None
        expires = int(exp[0])
        given = sig[0].encode("utf-8", "replace")
        found = None
        for business_id in candidates or [0]:
            expected = self.signature(business_id, call_sid, expires).encode("ascii")
            if hmac.compare_digest(expected, given) and candidates:
                found = business_id
        if found is None or expires < now:
            return None
        return found
