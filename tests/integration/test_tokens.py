"""Asymmetric bearer tokens, black box, on servers of their own: RS256 and ES256 keys from PEM
files (JWT_PUBLIC_KEYS) and from a JWKS file (JWT_JWKS_FILE), chosen by `kid`, several at once;
the RFC 8725 pitfalls against them (unknown and malicious `kid`, `none`, HS256 signed with a
public key's PEM, string/float `exp`, duplicate claims and header members, `crit`, oversized
tokens, wrong `iss`/`aud`, psychic ECDSA signatures, keys embedded in the header); and key
rotation on SIGHUP under load, including a broken key file.

Keys are generated at test time (python3-cryptography) into a temporary directory; tokens are
built and signed by hand, so that headers and claims can be anything. HS256 cases that
test_auth.py covers against the session server (none, exp types, duplicate claims, size) are
not repeated here except where the asymmetric path differs.
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import threading
import time

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import RSAAlgorithm

from conftest import server_with_env
from helpers import TEST_SECRET, sanitizer_reports, wait_until

ISSUER = "https://issuer.cangrejo.test"
AUDIENCE = "cangrejo-api"
PROBLEM_BASE = "https://cangrejo.dev/problems/"


# ---------------------------------------------------------------------------------------------
# keys and hand-made tokens


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _ec():
    return ec.generate_private_key(ec.SECP256R1())


def _public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _jwk(key, kid, **extra):
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(public))
    else:
        # RFC 7518 6.2.1.2: x and y are the full 32 bytes of a P-256 coordinate. PyJWT 2.6
        # (Debian 12) drops leading zero bytes, about one key in 128, which the server rightly
        # refuses; so the coordinates are written here.
        numbers = public.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": _b64url(numbers.x.to_bytes(32, "big")),
               "y": _b64url(numbers.y.to_bytes(32, "big"))}
    jwk.update(kid=kid, **extra)
    return jwk


def _write_atomically(path, data):
    """Replace a file the way deployments do (write aside, rename over)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def _write_jwks(path, jwks):
    _write_atomically(path, json.dumps({"keys": jwks}))


def _signature(alg, key, signing_input):
    if alg == "RS256":
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "HS256":
        return hmac.new(key, signing_input, hashlib.sha256).digest()
    if alg is None:
        return b""
    raise ValueError(f"cannot sign {alg!r}")


def _segment(value):
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return _b64url(text.encode())


FROM_HEADER = object()


def sign(header, claims, key, alg=FROM_HEADER):
    """A compact JWS of header and claims (dicts, or raw JSON text), signed with key the way
    `alg` says (default: the header's alg; None: an empty signature)."""
    if alg is FROM_HEADER:
        alg = header.get("alg")
    signing_input = f"{_segment(header)}.{_segment(claims)}".encode()
    return f"{signing_input.decode()}.{_b64url(_signature(alg, key, signing_input))}"


def claims_for(merchant, **changes):
    now = int(time.time())
    c = {"sub": "tokens-test", "scope": "merchants:admin", "merchants": [merchant],
         "iat": now, "exp": now + 300, "iss": ISSUER, "aud": AUDIENCE}
    c.update(changes)
    return {k: v for k, v in c.items() if v is not None}


class Keys:
    """Every key of this module, made once."""

    def __init__(self):
        self.rsa_a, self.rsa_b, self.ec_a = _rsa(), _rsa(), _ec()
        self.rsa_j, self.ec_j, self.rsa_enc = _rsa(), _ec(), _rsa()
        self.attacker_rsa, self.attacker_ec = _rsa(), _ec()


@pytest.fixture(scope="module")
def keys():
    return Keys()


# ---------------------------------------------------------------------------------------------
# servers of this module


def start_own_server(stack, session_server, name, **changes):
    """Another `cangrejo serve` on the session stack (already migrated by `server`), with the
    test environment changed (a value of None removes a variable)."""
    srv = server_with_env(stack, session_server.binary, name, **changes)
    srv.start()
    return srv


def stop_own_server(srv, sent_tokens=()):
    """Stops it; fails on an unclean exit, sanitizer reports or a token in its log."""
    code = srv.stop()
    log = srv.log_text()
    reports = sanitizer_reports(log)
    leaked = [t[:16] + "..." for t in sent_tokens if t and t in log]
    problems = []
    if code != 0:
        problems.append(f"{srv.log_path}: exit code {code}")
    if reports:
        problems.append("sanitizer reports:\n" + "\n".join(reports[:20]))
    if leaked:
        problems.append(f"{len(leaked)} token(s) written to the log, e.g. {leaked[0]}")
    if problems:
        pytest.fail(f"server {srv.log_path}: " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def merchant(server):
    """A merchant created through the session server (same database as every server here)."""
    from conftest import _merchant_counter
    from helpers import make_token

    mid = next(_merchant_counter)
    r = requests.put(f"{server.url}/v1/merchants/{mid}", timeout=10,
                     headers={"Authorization": f"Bearer {make_token('merchants:admin', [mid])}"},
                     json={"name": "Token Test", "timezone": "Europe/Madrid", "currency": "EUR"})
    assert r.status_code == 201, r.text
    return mid


class Sent:
    """Every token sent to a server of this module, to check none reached its log."""

    tokens = []


def get_merchant(srv, merchant, token, timeout=10):
    Sent.tokens.append(token)
    return requests.get(f"{srv.url}/v1/merchants/{merchant}", timeout=timeout,
                        headers={"Authorization": f"Bearer {token}"})


def assert_401(response, *must_not_echo):
    assert response.status_code == 401, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert 'error="invalid_token"' in response.headers.get("WWW-Authenticate", "")
    body = response.json()
    assert body["type"].startswith(PROBLEM_BASE) and body["status"] == 401
    for text in must_not_echo:
        assert str(text) not in response.text, f"401 body echoes {str(text)[:40]!r}"
    return body


def assert_200(response, merchant):
    assert response.status_code == 200, (response.status_code, response.text[:300])
    assert response.json()["merchant_id"] == merchant


@pytest.fixture(scope="module")
def pem_dir(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("pem-keys")
    for name in ("rsa_a", "rsa_b", "ec_a"):
        _write_atomically(str(d / f"{name}.pem"), _public_pem(getattr(keys, name)))
    return d


@pytest.fixture(scope="module")
def pem_server(stack, server, pem_dir):
    """PEM keys rsa-a, rsa-b, ec-a; HS256 too; JWT_ISSUER and JWT_AUDIENCE set."""
    srv = start_own_server(
        stack, server, "tokens-pem",
        JWT_PUBLIC_KEYS=(f"rsa-a={pem_dir / 'rsa_a.pem'}, rsa-b={pem_dir / 'rsa_b.pem'},"
                         f"ec-a={pem_dir / 'ec_a.pem'}"),
        JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    yield srv
    stop_own_server(srv, Sent.tokens)


@pytest.fixture(scope="module")
def jwks_server(stack, server, keys, tmp_path_factory):
    """A JWKS of rsa-j, ec-j (and an encryption key and a symmetric key, never to be used); no
    HS256 secret, no iss/aud required."""
    path = str(tmp_path_factory.mktemp("jwks") / "jwks.json")
    _write_jwks(path, [_jwk(keys.rsa_j, "rsa-j", use="sig", alg="RS256"),
                       _jwk(keys.ec_j, "ec-j"),
                       _jwk(keys.rsa_enc, "rsa-enc", use="enc"),
                       {"kty": "oct", "kid": "oct-1", "k": _b64url(TEST_SECRET.encode())}])
    srv = start_own_server(stack, server, "tokens-jwks", JWT_HS256_SECRET=None,
                           JWT_JWKS_FILE=path)
    yield srv
    stop_own_server(srv, Sent.tokens)


def rs(kid="rsa-a"):
    return {"alg": "RS256", "typ": "JWT", "kid": kid}


def es(kid="ec-a"):
    return {"alg": "ES256", "typ": "JWT", "kid": kid}


# ---------------------------------------------------------------------------------------------
# keys from PEM files and from a JWKS file, chosen by kid


def test_rs256_and_es256_from_pem_files(pem_server, keys, merchant):
    assert_200(get_merchant(pem_server, merchant, sign(rs("rsa-a"), claims_for(merchant),
                                                       keys.rsa_a)), merchant)
    assert_200(get_merchant(pem_server, merchant, sign(rs("rsa-b"), claims_for(merchant),
                                                       keys.rsa_b)), merchant)
    assert_200(get_merchant(pem_server, merchant, sign(es("ec-a"), claims_for(merchant),
                                                       keys.ec_a)), merchant)


def test_hs256_still_works_next_to_pem_keys(pem_server, merchant):
    token = sign({"alg": "HS256", "typ": "JWT"}, claims_for(merchant), TEST_SECRET.encode())
    assert_200(get_merchant(pem_server, merchant, token), merchant)


def test_rs256_and_es256_from_jwks(jwks_server, keys, merchant):
    c = claims_for(merchant, iss=None, aud=None)
    assert_200(get_merchant(jwks_server, merchant, sign(rs("rsa-j"), c, keys.rsa_j)), merchant)
    assert_200(get_merchant(jwks_server, merchant, sign(es("ec-j"), c, keys.ec_j)), merchant)


def test_the_kid_chooses_the_key(pem_server, keys, merchant):
    """Several keys at once: a signature counts only under the key its kid names."""
    c = claims_for(merchant)
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-b"), c, keys.rsa_a)))
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-a"), c, keys.rsa_b)))
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-a"), c, keys.attacker_rsa)))
    assert_401(get_merchant(pem_server, merchant, sign(es("ec-a"), c, keys.attacker_ec)))


def test_unknown_or_missing_kid_is_401(pem_server, jwks_server, keys, merchant):
    c = claims_for(merchant)
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-c"), c, keys.rsa_a)))
    assert_401(get_merchant(pem_server, merchant, sign({"alg": "RS256"}, c, keys.rsa_a)))
    assert_401(get_merchant(pem_server, merchant, sign({"alg": "ES256"}, c, keys.ec_a)))
    # A JWKS kid on the PEM server and the other way round.
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-j"), c, keys.rsa_j)))
    c = claims_for(merchant, iss=None, aud=None)
    assert_401(get_merchant(jwks_server, merchant, sign(rs("rsa-a"), c, keys.rsa_a)))


def test_jwks_keys_not_for_signing_are_never_used(jwks_server, keys, merchant):
    c = claims_for(merchant, iss=None, aud=None)
    assert_401(get_merchant(jwks_server, merchant, sign(rs("rsa-enc"), c, keys.rsa_enc)))
    token = sign({"alg": "HS256", "kid": "oct-1"}, c, TEST_SECRET.encode())
    assert_401(get_merchant(jwks_server, merchant, token))


def test_kid_naming_a_key_of_the_other_type_is_401(pem_server, keys, merchant):
    c = claims_for(merchant)
    assert_401(get_merchant(pem_server, merchant, sign(rs("ec-a"), c, keys.rsa_a)))
    assert_401(get_merchant(pem_server, merchant, sign(es("rsa-a"), c, keys.ec_a)))


MALICIOUS_KIDS = {
    "traversal": "../../../../../../etc/passwd",
    "absolute": "/etc/passwd",
    "dev-null": "/dev/null",
    "proc": "/proc/self/environ",
    "sql-or": "rsa-a' OR '1'='1",
    "sql-union": "x' UNION SELECT 'key' --",
    "sql-comment": "rsa-a'--",
    "sql-stacked": "rsa-a'; DROP TABLE orders; --",
    "command": "rsa-a; cat /etc/passwd",
    "format": "%s%s%s%n%x",
    "url": "https://attacker.example/key.pem",
    "case": "RSA-A",
    "trailing-space": "rsa-a ",
    "leading-space": " rsa-a",
    "list-syntax": "rsa-a,rsa-b",
    "assignment": "rsa-a=/etc/passwd",
    "newline": "rsa-a\n",
    "unicode": "rsa\u2010a",
    "very-long": "k" * 5000,
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(MALICIOUS_KIDS))
def test_malicious_string_kid_is_401(pem_server, keys, merchant, name):
    kid = MALICIOUS_KIDS[name]
    token = sign(rs(kid), claims_for(merchant), keys.rsa_a)
    body = assert_401(get_merchant(pem_server, merchant, token))
    if len(kid) > 3:
        assert kid not in json.dumps(body), "the kid is echoed"


def test_kid_naming_the_key_file_itself_is_401(pem_server, pem_dir, keys, merchant):
    """A kid is a name in the configuration, never a path to open."""
    for path in (str(pem_dir / "rsa_a.pem"), f"{pem_dir}/../{pem_dir.name}/rsa_a.pem"):
        assert_401(get_merchant(pem_server, merchant, sign(rs(path), claims_for(merchant),
                                                           keys.rsa_a)))


def test_kid_with_a_nul_byte_is_401(pem_server, keys, merchant):
    header = '{"alg":"RS256","kid":"rsa-a\\u0000.pem"}'
    assert_401(get_merchant(pem_server, merchant, sign(header, claims_for(merchant), keys.rsa_a,
                                                       alg="RS256")))


@pytest.mark.parametrize("kid", [7, 0, -1, 1.5, True, None, ["rsa-a"], {"kid": "rsa-a"}],
                         ids=["int", "zero", "negative", "float", "bool", "null", "array",
                              "object"])
def test_non_string_kid_is_401(pem_server, keys, merchant, kid):
    token = sign({"alg": "RS256", "kid": kid}, claims_for(merchant), keys.rsa_a)
    assert_401(get_merchant(pem_server, merchant, token))


def test_oversized_kid_is_401_unread(pem_server, keys, merchant):
    token = sign(rs("k" * 9000), claims_for(merchant), keys.rsa_a)
    assert len(token) > 8192
    assert_401(get_merchant(pem_server, merchant, token))


# ---------------------------------------------------------------------------------------------
# algorithm pitfalls


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_with_a_valid_kid_is_401(pem_server, keys, merchant, alg):
    c = claims_for(merchant)
    assert_401(get_merchant(pem_server, merchant, sign({"alg": alg, "kid": "rsa-a"}, c, None,
                                                       alg=None)))
    # The same with the RSA signature still attached.
    assert_401(get_merchant(pem_server, merchant, sign({"alg": alg, "kid": "rsa-a"}, c,
                                                       keys.rsa_a, alg="RS256")))


def test_asymmetric_alg_without_signature_is_401(pem_server, merchant):
    c = claims_for(merchant)
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-a"), c, None, alg=None)))
    assert_401(get_merchant(pem_server, merchant, sign(es("ec-a"), c, None, alg=None)))


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "ES384", "ES512", "EdDSA",
                                 "rs256", "RS256 "])
def test_other_asymmetric_algorithms_are_401(pem_server, keys, merchant, alg):
    key = keys.ec_a if alg.upper().startswith("ES") else keys.rsa_a
    sig_alg = "ES256" if key is keys.ec_a else "RS256"
    token = sign({"alg": alg, "kid": "ec-a" if key is keys.ec_a else "rsa-a"},
                 claims_for(merchant), key, alg=sig_alg)
    assert_401(get_merchant(pem_server, merchant, token))


def _pem_forms(key):
    pem = _public_pem(key)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"pem": pem, "pem-no-newline": pem.rstrip(b"\n"), "der": der,
            "pkcs1-pem": (key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.PKCS1)
                          if isinstance(key, rsa.RSAPrivateKey) else pem)}


@pytest.mark.parametrize("form", ["pem", "pem-no-newline", "der", "pkcs1-pem"])
def test_hs256_signed_with_a_public_key_is_401(pem_server, jwks_server, keys, merchant, form):
    """Key confusion: the public key (as the server holds it) used as an HMAC secret, with the
    kid of that key, on a server that allows HS256 and on one that does not."""
    for kid, key in (("rsa-a", keys.rsa_a), ("ec-a", keys.ec_a)):
        secret = _pem_forms(key)[form]
        for header in ({"alg": "HS256", "kid": kid}, {"alg": "HS256"}):
            token = sign(header, claims_for(merchant), secret)
            assert_401(get_merchant(pem_server, merchant, token))
    secret = _pem_forms(keys.rsa_j)[form]
    jwk_text = json.dumps(_jwk(keys.rsa_j, "rsa-j")).encode()
    c = claims_for(merchant, iss=None, aud=None)
    for s in (secret, jwk_text):
        assert_401(get_merchant(jwks_server, merchant,
                                sign({"alg": "HS256", "kid": "rsa-j"}, c, s)))


def test_keys_embedded_in_the_header_are_ignored(pem_server, keys, merchant):
    """jwk / jku / x5u / x5c pointing at the attacker's own key never make it trusted."""
    c = claims_for(merchant)
    attacker_jwk = _jwk(keys.attacker_rsa, "rsa-a")
    for extra in ({"jwk": attacker_jwk}, {"jku": "http://127.0.0.1:1/jwks.json"},
                  {"x5u": "http://127.0.0.1:1/cert.pem"}, {"x5c": ["MIIBIjAN"]}):
        for kid in ("rsa-a", "attacker"):
            header = dict(rs(kid), **extra)
            assert_401(get_merchant(pem_server, merchant, sign(header, c, keys.attacker_rsa)))
    # Control: with the real key the same header members change nothing.
    header = dict(rs("rsa-a"), jku="http://127.0.0.1:1/jwks.json")
    assert_200(get_merchant(pem_server, merchant, sign(header, c, keys.rsa_a)), merchant)


def test_psychic_and_malformed_ecdsa_signatures_are_401(pem_server, keys, merchant):
    """CVE-2022-21449 (r = s = 0), r or s = n, DER instead of raw r||s, truncated."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    head = f"{_segment(es('ec-a'))}.{_segment(claims_for(merchant))}"
    good = sign(es("ec-a"), claims_for(merchant), keys.ec_a).rsplit(".", 1)[1]
    raw = base64.urlsafe_b64decode(good + "==")
    der = keys.ec_a.sign(head.encode(), ec.ECDSA(hashes.SHA256()))
    for sig in (bytes(64), n.to_bytes(32, "big") * 2, raw[:32] + n.to_bytes(32, "big"),
                der, raw[:63], raw + b"\0", b""):
        assert_401(get_merchant(pem_server, merchant, f"{head}.{_b64url(sig)}"))


def test_rsa_signature_tampering_is_401(pem_server, keys, merchant):
    token = sign(rs("rsa-a"), claims_for(merchant), keys.rsa_a)
    head, sig = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[-1] ^= 1
    assert_401(get_merchant(pem_server, merchant, f"{head}.{_b64url(bytes(raw))}"))
    assert_401(get_merchant(pem_server, merchant, f"{head}.{sig}A"))
    forged = claims_for(merchant, merchants="*", scope="admin merchants:admin")
    assert_401(get_merchant(pem_server, merchant,
                            f"{_segment(rs('rsa-a'))}.{_segment(forged)}.{sig}"))


# ---------------------------------------------------------------------------------------------
# claims and header members


@pytest.mark.parametrize("exp", ["numeric-string", "float", "float-integral", "exponent",
                                 "huge", "negative"])
def test_string_or_float_exp_is_401(pem_server, keys, merchant, exp):
    later = int(time.time()) + 300
    raw = {"numeric-string": f'"{later}"', "float": f"{later}.5", "float-integral": f"{later}.0",
           "exponent": "1e12", "huge": "99999999999999999999999", "negative": "-1"}[exp]
    c = claims_for(merchant, exp=None)
    text = json.dumps(c, separators=(",", ":"))[:-1] + f',"exp":{raw}}}'
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-a"), text, keys.rsa_a,
                                                       alg="RS256")))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_float_nbf_or_iat_is_401(pem_server, keys, merchant, claim):
    c = claims_for(merchant, **{claim: time.time() - 60})
    assert isinstance(c[claim], float)
    assert_401(get_merchant(pem_server, merchant, sign(es("ec-a"), c, keys.ec_a)))


def test_expired_asymmetric_token_is_401(pem_server, keys, merchant):
    c = claims_for(merchant, exp=int(time.time()) - 120, iat=int(time.time()) - 600)
    assert_401(get_merchant(pem_server, merchant, sign(es("ec-a"), c, keys.ec_a)))


@pytest.mark.parametrize("duplicate", ["merchants", "exp", "scope", "iss", "aud"])
def test_duplicate_claims_are_401(pem_server, keys, merchant, duplicate):
    c = claims_for(merchant)
    second = {"merchants": '"*"', "exp": str(int(time.time()) + 10**6), "scope": '"admin"',
              "iss": f'"{ISSUER}"', "aud": f'"{AUDIENCE}"'}[duplicate]
    text = json.dumps(c, separators=(",", ":"))[:-1] + f',"{duplicate}":{second}}}'
    assert_401(get_merchant(pem_server, merchant, sign(rs("rsa-a"), text, keys.rsa_a,
                                                       alg="RS256")))


@pytest.mark.parametrize("header", [
    '{"alg":"RS256","kid":"rsa-a","kid":"rsa-b"}',
    '{"alg":"RS256","kid":"rsa-a","alg":"none"}',
    '{"alg":"none","alg":"RS256","kid":"rsa-a"}',
])
def test_duplicate_header_members_are_401(pem_server, keys, merchant, header):
    assert_401(get_merchant(pem_server, merchant, sign(header, claims_for(merchant), keys.rsa_a,
                                                       alg="RS256")))


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-unknown"], [], "exp", None],
                         ids=["exp", "b64", "unknown", "empty", "string", "null"])
def test_crit_header_is_401(pem_server, keys, merchant, crit):
    c = claims_for(merchant)
    for header, key in ((rs("rsa-a"), keys.rsa_a), (es("ec-a"), keys.ec_a),
                        ({"alg": "HS256", "typ": "JWT"}, TEST_SECRET.encode())):
        h = dict(header, crit=crit)
        if crit == ["x-unknown"]:
            h["x-unknown"] = True
        assert_401(get_merchant(pem_server, merchant, sign(h, c, key)))


def test_oversized_asymmetric_token_is_401(pem_server, keys, merchant):
    big = sign(rs("rsa-a"), claims_for(merchant, pad="x" * 7000), keys.rsa_a)
    assert len(big) > 8192
    assert_401(get_merchant(pem_server, merchant, big))
    near = sign(rs("rsa-a"), claims_for(merchant, pad="x" * 5500), keys.rsa_a)
    assert 7000 < len(near) <= 8192
    assert_200(get_merchant(pem_server, merchant, near), merchant)
    huge = sign(es("ec-a"), claims_for(merchant, pad="x" * 20000), keys.ec_a)
    assert get_merchant(pem_server, merchant, huge).status_code == 431


@pytest.mark.parametrize("case", ["wrong-iss", "no-iss", "iss-prefix", "iss-array", "iss-int",
                                  "wrong-aud", "no-aud", "aud-array-without", "aud-int",
                                  "aud-case"])
def test_wrong_issuer_or_audience_is_401(pem_server, keys, merchant, case):
    changes = {"wrong-iss": {"iss": "https://attacker.example"}, "no-iss": {"iss": None},
               "iss-prefix": {"iss": ISSUER + "/x"}, "iss-array": {"iss": [ISSUER]},
               "iss-int": {"iss": 1}, "wrong-aud": {"aud": "other-api"}, "no-aud": {"aud": None},
               "aud-array-without": {"aud": ["a", "b"]}, "aud-int": {"aud": 7},
               "aud-case": {"aud": AUDIENCE.upper()}}[case]
    for header, key in ((rs("rsa-a"), keys.rsa_a), (es("ec-a"), keys.ec_a)):
        assert_401(get_merchant(pem_server, merchant, sign(header, claims_for(merchant, **changes),
                                                           key)))


def test_audience_array_holding_ours_is_accepted(pem_server, keys, merchant):
    c = claims_for(merchant, aud=["another-api", AUDIENCE])
    assert_200(get_merchant(pem_server, merchant, sign(rs("rsa-a"), c, keys.rsa_a)), merchant)


def test_issuer_and_audience_apply_to_hs256_too(pem_server, merchant):
    secret = TEST_SECRET.encode()
    header = {"alg": "HS256", "typ": "JWT"}
    assert_401(get_merchant(pem_server, merchant, sign(header, claims_for(merchant, iss=None),
                                                       secret)))
    assert_401(get_merchant(pem_server, merchant, sign(header, claims_for(merchant, aud="x"),
                                                       secret)))


# ---------------------------------------------------------------------------------------------
# SIGHUP: rotation without dropping requests


def _log_has(srv, offset, text):
    return text in srv.log_since(offset)


def _sighup_and_wait(srv, expect="token keys reloaded", timeout=10):
    offset = srv.log_size()
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: _log_has(srv, offset, "received SIGHUP"), timeout), \
        f"no reload logged within {timeout}s"
    line = [ln for ln in srv.log_since(offset).splitlines() if "received SIGHUP" in ln][0]
    assert expect in line, line
    return line


class Load:
    """Client threads sending GET /v1/merchants/{id} in a loop, each with its own token and
    keep-alive connection; every answer is recorded with the time it was sent."""

    def __init__(self, srv, merchant, tokens, threads_per_token=2):
        self.srv, self.merchant = srv, merchant
        self.results = {name: [] for name in tokens}
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(name, token), daemon=True)
                        for name, token in tokens.items() for _ in range(threads_per_token)]
        Sent.tokens.extend(tokens.values())

    def _run(self, name, token):
        session = requests.Session()
        url = f"{self.srv.url}/v1/merchants/{self.merchant}"
        h = {"Authorization": f"Bearer {token}"}
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                status = session.get(url, headers=h, timeout=10).status_code
            except requests.RequestException as e:  # a dropped request is a failure
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
                status = None
            self.results[name].append((sent, time.monotonic(), status))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def statuses(self, name, after=None, before=None):
        return [s for sent, done, s in self.results[name]
                if (after is None or sent > after) and (before is None or done < before)]


def _wait_for_requests(load, count, timeout=20):
    start = {name: len(r) for name, r in load.results.items()}
    assert wait_until(lambda: all(len(r) - start[n] >= count for n, r in load.results.items()),
                      timeout), "the load made no progress"


@pytest.fixture
def rotation_dir(tmp_path):
    return tmp_path


def test_jwks_rotation_on_sighup_under_load(stack, server, keys, merchant, rotation_dir):
    """JWKS {stay, old} becomes {stay, new} while 8 client threads send requests: `stay` never
    fails; `old` works until the reload and is refused after it; `new` is refused before and
    works after; nothing else happens to any request (no error, no 5xx)."""
    path = str(rotation_dir / "jwks.json")
    stay, old, new = keys.rsa_j, keys.ec_j, _ec()
    _write_jwks(path, [_jwk(stay, "stay"), _jwk(old, "old")])
    srv = start_own_server(stack, server, "tokens-rotate-jwks", JWT_HS256_SECRET=None,
                           JWT_JWKS_FILE=path)
    try:
        c = claims_for(merchant, iss=None, aud=None, exp=int(time.time()) + 600)
        tokens = {"stay": sign(rs("stay"), c, stay), "old": sign(es("old"), c, old),
                  "new": sign(es("new"), c, new)}
        with Load(srv, merchant, tokens) as load:
            _wait_for_requests(load, 20)
            # Reloads of the same keys change nothing for anyone.
            for _ in range(3):
                _sighup_and_wait(srv)
            _wait_for_requests(load, 20)
            _write_jwks(path, [_jwk(stay, "stay"), _jwk(new, "new")])
            signalled = time.monotonic()
            _sighup_and_wait(srv, "token keys reloaded (2 public key(s))")
            reloaded = time.monotonic()
            _wait_for_requests(load, 30)
            # Swapping back and forth under load, then settling on the new set.
            for keyset in ([stay, "stay", old, "old"], [stay, "stay", new, "new"]) * 8:
                _write_jwks(path, [_jwk(keyset[0], keyset[1]), _jwk(keyset[2], keyset[3])])
                _sighup_and_wait(srv)
            settled = time.monotonic()
            _wait_for_requests(load, 30)
        assert not load.errors, load.errors[:5]
        assert set(load.statuses("stay")) == {200}, "a request with a kept key failed"
        assert set(load.statuses("old", before=signalled)) == {200}
        assert set(load.statuses("old", after=reloaded)) <= {200, 401}
        assert set(load.statuses("old", after=settled)) == {401}
        assert set(load.statuses("new", before=signalled)) == {401}
        assert set(load.statuses("new", after=settled)) == {200}
        assert len(load.statuses("stay")) >= 100
    finally:
        stop_own_server(srv, Sent.tokens)


def test_pem_rotation_on_sighup(stack, server, keys, merchant, rotation_dir):
    """A PEM file rewritten with another key under the same kid: the old key is refused and the
    new one accepted after SIGHUP; the other kid is untouched."""
    p1, p2 = rotation_dir / "k1.pem", rotation_dir / "k2.pem"
    _write_atomically(str(p1), _public_pem(keys.rsa_a))
    _write_atomically(str(p2), _public_pem(keys.ec_a))
    srv = start_own_server(stack, server, "tokens-rotate-pem",
                           JWT_PUBLIC_KEYS=f"k1={p1},k2={p2}")
    try:
        c = claims_for(merchant, iss=None, aud=None)
        k1, k2_old = sign(rs("k1"), c, keys.rsa_a), sign(es("k2"), c, keys.ec_a)
        successor = _ec()
        k2_new = sign(es("k2"), c, successor)
        with Load(srv, merchant, {"k1": k1}) as load:
            assert_200(get_merchant(srv, merchant, k2_old), merchant)
            assert_401(get_merchant(srv, merchant, k2_new))
            _write_atomically(str(p2), _public_pem(successor))
            assert_200(get_merchant(srv, merchant, k2_old), merchant)  # not before the signal
            _sighup_and_wait(srv, "token keys reloaded (2 public key(s))")
            assert_401(get_merchant(srv, merchant, k2_old))
            assert_200(get_merchant(srv, merchant, k2_new), merchant)
            _wait_for_requests(load, 10)
        assert not load.errors and set(load.statuses("k1")) == {200}
    finally:
        stop_own_server(srv, Sent.tokens)


def test_broken_key_file_on_sighup_keeps_the_old_keys(stack, server, keys, merchant,
                                                      rotation_dir):
    """Each way a key file can be broken at reload time, one after the other under load: the
    server keeps serving with the previous keys, says why in the log (never quoting the file),
    and once the files are fixed the next SIGHUP takes them."""
    jwks, pem = str(rotation_dir / "jwks.json"), str(rotation_dir / "k.pem")
    good_jwks = json.dumps({"keys": [_jwk(keys.rsa_j, "rj")]})
    good_pem = _public_pem(keys.ec_a)
    _write_atomically(jwks, good_jwks)
    _write_atomically(pem, good_pem)
    srv = start_own_server(stack, server, "tokens-broken", JWT_HS256_SECRET=None,
                           JWT_JWKS_FILE=jwks, JWT_PUBLIC_KEYS=f"ek={pem}")
    secret_looking = _b64url(b"private-exponent-must-never-be-logged")
    successor = _rsa()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    breakages = {
        "jwks-garbage": (jwks, f'{{"keys":[{{"kty":"RSA","d":"{secret_looking}" oops'),
        "jwks-truncated": (jwks, json.dumps({"keys": [_jwk(successor, "rj")]})[:-20]),
        "jwks-not-an-object": (jwks, "[]"),
        "jwks-no-usable-key": (jwks, json.dumps({"keys": [{"kty": "oct", "kid": "o",
                                                           "k": secret_looking}]})),
        "jwks-duplicate-kid": (jwks, json.dumps({"keys": [_jwk(successor, "rj"),
                                                          _jwk(keys.rsa_a, "rj")]})),
        "jwks-kid-clash-with-pem": (jwks, json.dumps({"keys": [_jwk(successor, "ek")]})),
        "jwks-empty-file": (jwks, ""),
        "jwks-missing": (jwks, None),
        "pem-garbage": (pem, f"-----BEGIN PUBLIC KEY-----\n{secret_looking}\n"
                             "-----END PUBLIC KEY-----\n"),
        "pem-missing": (pem, None),
        "pem-private-key": (pem, keys.ec_j.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
        "pem-weak-rsa": (pem, _public_pem(weak)),
    }
    try:
        c = claims_for(merchant, iss=None, aud=None, exp=int(time.time()) + 600)
        rj, ek = sign(rs("rj"), c, keys.rsa_j), sign(es("ek"), c, keys.ec_a)
        rj_new = sign(rs("rj"), c, successor)
        with Load(srv, merchant, {"rj": rj, "ek": ek}) as load:
            _wait_for_requests(load, 10)
            for name, (path, content) in breakages.items():
                if content is None:
                    os.remove(path)
                else:
                    _write_atomically(path, content)
                line = _sighup_and_wait(srv, "token keys not reloaded")
                assert ("JWT_JWKS_FILE" if path == jwks else "JWT_PUBLIC_KEYS") in line, \
                    (name, line)
                _wait_for_requests(load, 5)
                assert srv.running, name
                _write_atomically(path, good_jwks if path == jwks else good_pem)
            # Fixed files, with a successor for rj: the next SIGHUP takes them.
            _write_jwks(jwks, [_jwk(successor, "rj")])
            fixed = time.monotonic()
            _sighup_and_wait(srv, "token keys reloaded (2 public key(s))")
            reloaded = time.monotonic()
            _wait_for_requests(load, 10)
        assert not load.errors, load.errors[:5]
        assert set(load.statuses("ek")) == {200}
        assert set(load.statuses("rj", before=fixed)) == {200}, "the old keys were dropped"
        assert set(load.statuses("rj", after=reloaded)) == {401}
        assert_200(get_merchant(srv, merchant, rj_new), merchant)
        log = srv.log_text()
        assert secret_looking not in log and "oops" not in log, "the log quotes the key file"
        assert "BEGIN" not in log
    finally:
        stop_own_server(srv, Sent.tokens)
