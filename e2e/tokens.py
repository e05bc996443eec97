"""JWTs for the auth tests, minted with the standard library and the openssl CLI:
HS256 with hmac, RS256 and ES256 by signing with `openssl dgst -sha256 -sign` (ES256:
the DER signature converted to the raw r||s of RFC 7518 3.4). Keys come from
`openssl genpkey`; JWKS documents are built from `openssl pkey -text` output."""

import base64
import hashlib
import hmac
import json
import re
import subprocess
import time
from pathlib import Path


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header, claims):
    return "%s.%s" % (b64url(json.dumps(header, separators=(",", ":")).encode()),
                      b64url(json.dumps(claims, separators=(",", ":")).encode()))


def claims(exp_in=300, endpoints=None, **extra):
    """Claims expiring exp_in seconds from now (None: no exp); endpoints: the
    piko.endpoints list (None: no piko claim)."""
    c = {"iat": int(time.time()), "sub": "e2e"}
    if exp_in is not None:
        c["exp"] = int(time.time()) + exp_in
    if endpoints is not None:
        c["piko"] = {"endpoints": list(endpoints)}
    c.update(extra)
    return c


def hs256(secret, claims_, kid=None, alg="HS256"):
    header = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing = _segments(header, claims_)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return signing + "." + b64url(sig)


def unsigned(claims_):
    """alg none: the classic forgery."""
    return _segments({"alg": "none", "typ": "JWT"}, claims_) + "."


def _der_len(data, i):
    n = data[i]
    i += 1
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i:i + k], "big")
        i += k
    return n, i


def ecdsa_der_to_raw(der, size=32):
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r||s, each size bytes."""
    assert der[0] == 0x30, "not a DER sequence"
    _, i = _der_len(der, 1)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02, "not a DER integer"
        n, i = _der_len(der, i + 1)
        v = der[i:i + n]
        i += n
        out += v.lstrip(b"\x00").rjust(size, b"\x00")
    return out


class Key:
    """An RSA or EC (P-256) private key in a PEM file, generated with openssl."""

    def __init__(self, directory, name, kind="rsa"):
        self.kind = kind
        self.path = Path(directory) / ("%s.pem" % name)
        if kind == "rsa":
            argv = ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048"]
        else:
            argv = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256"]
        subprocess.run(argv + ["-out", str(self.path)], check=True, capture_output=True)
        self.public_pem = subprocess.run(
            ["openssl", "pkey", "-in", str(self.path), "-pubout"], check=True,
            capture_output=True, text=True).stdout
        self.public_path = Path(directory) / ("%s.pub.pem" % name)
        self.public_path.write_text(self.public_pem)

    @property
    def alg(self):
        return "RS256" if self.kind == "rsa" else "ES256"

    def sign(self, claims_, kid=None, alg=None):
        header = {"alg": alg or self.alg, "typ": "JWT"}
        if kid:
            header["kid"] = kid
        signing = _segments(header, claims_)
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.path)],
                             input=signing.encode(), check=True, capture_output=True).stdout
        if self.kind == "ec":
            sig = ecdsa_der_to_raw(sig)
        return signing + "." + b64url(sig)

    def jwk(self, kid):
        """The public key as a JWK (RSA only: n and e from `openssl pkey -text`)."""
        assert self.kind == "rsa"
        text = subprocess.run(["openssl", "pkey", "-in", str(self.path), "-noout", "-text"],
                              check=True, capture_output=True, text=True).stdout
        m = re.search(r"modulus:\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
        n = bytes.fromhex(re.sub(r"[\s:]", "", m.group(1))).lstrip(b"\x00")
        e = int(re.search(r"publicExponent: (\d+)", text).group(1))
        return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(n),
                "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big"))}


def write_jwks(path, jwks):
    """Replaces the JWKS file atomically (a rename), as a key rotation would."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": list(jwks)}))
    tmp.rename(path)
