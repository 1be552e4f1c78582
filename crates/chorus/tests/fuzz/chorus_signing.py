"""Schemathesis hook: signs every request as chorus's client does.

The canonical form is model::signature's (crates/model/src/signature.rs):

    METHOD \n HOST \n PATH \n QUERY \n TIMESTAMP \n NONCE \n hex(SHA256(BODY))

signed with HMAC-SHA256 under the signing key, HMAC-SHA256(hex-decoded secret,
"chorus signing key v1"). The signature is computed on the
request as `requests` prepared it (path and query exactly as sent, body bytes exactly as
sent), so every generated case is signed, malformed ones included. The key comes from
CHORUS_KEY_ID and CHORUS_KEY_SECRET.
"""

import hashlib
import hmac
import os
import secrets
import time
import urllib.parse

import requests
import schemathesis


class ChorusSignature(requests.auth.AuthBase):
    def __init__(self, key_id, secret_hex):
        self.key_id = key_id
        self.secret = hmac.new(
            bytes.fromhex(secret_hex), b"chorus signing key v1", hashlib.sha256
        ).digest()

    def __call__(self, request):
        url = urllib.parse.urlsplit(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        body_hash = hashlib.sha256(body).hexdigest()
        canonical = "\n".join(
            [request.method, url.netloc, url.path, url.query, timestamp, nonce, body_hash]
        )
        signature = hmac.new(self.secret, canonical.encode("utf-8"), hashlib.sha256)
        request.headers["x-chorus-key"] = self.key_id
        request.headers["x-chorus-timestamp"] = timestamp
        request.headers["x-chorus-nonce"] = nonce
        request.headers["x-chorus-content-sha256"] = body_hash
        request.headers["x-chorus-signature"] = signature.hexdigest()
        return request


SIGNATURE = ChorusSignature(os.environ["CHORUS_KEY_ID"], os.environ["CHORUS_KEY_SECRET"])


@schemathesis.hook
def before_call(context, case, kwargs):
    kwargs["auth"] = SIGNATURE


# A workflow spec is sent as TOML text (`POST /v1/workflows`): generated strings go on the
# wire as text, as `text/plain` bodies do.
schemathesis.serializer.alias("application/toml", "text/plain")
