"""HTTPS, black box, on servers of their own (TLS_CERT_FILE / TLS_KEY_FILE, self-signed
certificates made at test time): TLS 1.2 and 1.3 handshakes succeed with forward-secret AEAD
ciphers; TLS 1.0 and 1.1 are refused by the server (proved with hand-made ClientHellos that
differ only in their version, and with `openssl s_client` next to a control `openssl s_server`
that speaks TLS 1.0, so the refusal cannot be the local client's); `testssl.sh` (protocols,
cipher categories, vulnerabilities) finds nothing of severity HIGH or CRITICAL and nothing
VULNERABLE.
"""

import datetime
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from conftest import Server, _server_env
from helpers import free_port, sanitizer_reports

TESTSSL_TIMEOUT = 150


# ---------------------------------------------------------------------------------------------
# certificates and servers


def _self_signed(key, directory, name):
    """Writes <name>.crt and <name>.key (PEM) for 127.0.0.1/localhost; returns their paths."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    with open(crt, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(pem, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(pem, 0o600)
    return crt, pem


class TlsServer(Server):
    """The same server over HTTPS; `ca` is the certificate clients trust."""

    def __init__(self, *args, ca, **kwargs):
        super().__init__(*args, **kwargs)
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = ca

    def start(self):
        # Server.start polls url/readyz with requests: make it trust the self-signed certificate.
        saved = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = self.ca
        try:
            super().start()
        finally:
            if saved is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = saved


def _start_tls_server(stack, session_server, directory, kind):
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else \
        ec.generate_private_key(ec.SECP256R1())
    crt, pem = _self_signed(key, directory, kind)
    port = free_port()
    env = dict(_server_env(stack, port), TLS_CERT_FILE=crt, TLS_KEY_FILE=pem)
    srv = TlsServer(session_server.binary, env, os.path.join(stack.dir, f"tls-{kind}.log"), port,
                    ca=crt)
    srv.start()
    return srv


def _stop(srv):
    code = srv.stop()
    reports = sanitizer_reports(srv.log_text())
    assert code == 0 and not reports, (srv.log_path, code, reports[:10])


@pytest.fixture(scope="module", params=["rsa", "ecdsa"])
def tls_server(request, stack, server, tmp_path_factory):
    srv = _start_tls_server(stack, server, str(tmp_path_factory.mktemp("tls")), request.param)
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def rsa_server(stack, server, tmp_path_factory):
    srv = _start_tls_server(stack, server, str(tmp_path_factory.mktemp("tls-scan")), "rsa")
    yield srv
    _stop(srv)


def _context(version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def _https_get(srv, path, ctx):
    """One GET over a fresh TLS connection: (status line, negotiated version, cipher)."""
    ctx.load_verify_locations(srv.ca)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                        .encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data.split(b"\r\n", 1)[0].decode(), tls.version(), tls.cipher()[0]


# ---------------------------------------------------------------------------------------------
# TLS 1.2 and 1.3 work


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
def test_modern_tls_handshake_and_request(tls_server, version):
    status, negotiated, cipher = _https_get(tls_server, "/livez", _context(version))
    assert status == "HTTP/1.1 200 OK", status
    assert negotiated == version.name.replace("v1_", "v1."), negotiated
    # Forward secrecy and AEAD only (TLS 1.3 suites are all both).
    assert any(c in cipher for c in ("GCM", "CHACHA20")), cipher
    if version == ssl.TLSVersion.TLSv1_2:
        assert cipher.startswith("ECDHE-"), cipher


def test_api_over_https(tls_server, make_token, merchant_id):
    token = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{tls_server.url}/v1/merchants/{merchant_id}", verify=tls_server.ca,
                     headers={"Authorization": f"Bearer {token}"}, timeout=10,
                     json={"name": "TLS", "timezone": "Europe/Madrid", "currency": "EUR"})
    assert r.status_code == 201, r.text
    r = requests.get(f"{tls_server.url}/v1/merchants/{merchant_id}", verify=tls_server.ca,
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "TLS"


def test_plain_http_on_the_tls_port_gets_no_answer(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            data = b""
    assert b"HTTP/1.1 200" not in data


@pytest.mark.parametrize("cipher", ["AES128-SHA", "AES256-SHA256", "ECDHE-RSA-AES128-SHA",
                                    "ECDHE-ECDSA-AES256-SHA", "DHE-RSA-AES128-GCM-SHA256",
                                    "AES128-GCM-SHA256"])
def test_weak_tls12_ciphers_are_refused(tls_server, cipher):
    """CBC, static RSA key exchange and finite-field DHE are not offered with TLS 1.2."""
    ctx = _context(ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(f"{cipher}:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _https_get(tls_server, "/livez", ctx)


# ---------------------------------------------------------------------------------------------
# TLS 1.0 and 1.1 are refused by the server


TLS10, TLS11, TLS12 = 0x0301, 0x0302, 0x0303
# ECDHE-RSA/ECDSA with AES-CBC-SHA and AES-GCM, RSA-AES-CBC-SHA: what a TLS 1.0 client offers,
# plus the GCM suites the server does accept under TLS 1.2.
OLD_SUITES = [0xC013, 0xC014, 0xC009, 0xC00A, 0x002F, 0x0035, 0x000A]
GCM_SUITES = [0xC02F, 0xC030, 0xC02B, 0xC02C]


def _ext(kind, body):
    return struct.pack("!HH", kind, len(body)) + body


def _client_hello(version):
    """A ClientHello record; only `version` (record and client_version) differs between calls,
    and the suites and extensions are those any TLS 1.0-1.2 client could send."""
    suites = OLD_SUITES + GCM_SUITES
    host = b"localhost"
    groups = [0x0017, 0x0018, 0x001D]  # P-256, P-384, X25519
    sigalgs = [0x0401, 0x0403, 0x0501, 0x0503, 0x0804, 0x0201, 0x0203]
    extensions = b"".join([
        _ext(0x0000, struct.pack("!HBH", len(host) + 3, 0, len(host)) + host),
        _ext(0x000A, struct.pack("!H", 2 * len(groups)) + b"".join(struct.pack("!H", g)
                                                                   for g in groups)),
        _ext(0x000B, b"\x01\x00"),
        _ext(0x000D, struct.pack("!H", 2 * len(sigalgs)) + b"".join(struct.pack("!H", s)
                                                                    for s in sigalgs)),
        _ext(0xFF01, b"\x00"),  # renegotiation_info
    ])
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16" + struct.pack("!HH", version, len(handshake)) + handshake


def _first_record(port, hello):
    """(content type, first bytes of the payload) of the server's first record, or None when it
    closes without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(hello)
        data = b""
        deadline = time.monotonic() + 10
        while len(data) < 7 and time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    if len(data) < 7:
        return None
    return data[0], data[5:7]


def test_hand_made_tls12_hello_gets_a_server_hello(tls_server):
    """Control for the next test: the same ClientHello with version TLS 1.2 is accepted."""
    record = _first_record(tls_server.port, _client_hello(TLS12))
    assert record is not None and record[0] == 0x16 and record[1][0] == 0x02, record


@pytest.mark.parametrize("version", [TLS10, TLS11], ids=["tls1.0", "tls1.1"])
def test_hand_made_old_hello_gets_a_protocol_alert(tls_server, version):
    record = _first_record(tls_server.port, _client_hello(version))
    # A fatal alert (protocol_version 70, or handshake_failure 40), or a close without one.
    assert record is None or (record[0] == 0x15 and record[1][0] == 2
                              and record[1][1] in (70, 40)), record


def _s_client(port, flag):
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag,
         "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"],
        input=b"Q\n", capture_output=True, timeout=20)
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def old_tls_control(tmp_path_factory):
    """`openssl s_server` speaking only TLS 1.0 and 1.1: proves the local s_client can."""
    d = str(tmp_path_factory.mktemp("tls-control"))
    crt, pem = _self_signed(rsa.generate_private_key(65537, 2048), d, "control")
    port = free_port()
    proc = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", crt,
                             "-key", pem, "-no_tls1_2", "-no_tls1_3", "-cipher",
                             "DEFAULT@SECLEVEL=0", "-www"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_openssl_old_protocol_is_refused_by_the_server(tls_server, old_tls_control, flag):
    code, out = _s_client(old_tls_control, flag)
    assert code == 0 and "Cipher is " in out and "(NONE)" not in out, \
        f"control: this s_client cannot do {flag} at all:\n{out[-1500:]}"
    code, out = _s_client(tls_server.port, flag)
    assert code != 0, out[-1500:]
    assert "Cipher is (NONE)" in out or "no peer certificate available" in out, out[-1500:]
    # The refusal came from the server (its alert, or its closing the handshake), not from a
    # local lack of the protocol.
    assert "no protocols available" not in out, out[-1500:]
    assert ("alert protocol version" in out or "alert handshake failure" in out
            or "unexpected eof" in out or "wrong version number" in out), out[-1500:]


# ---------------------------------------------------------------------------------------------
# renegotiation


def _s_client_session(port, renegotiate):
    """A TLS 1.2 `openssl s_client -msg` session: optionally "R" (a client-initiated
    renegotiation), then GET /livez; returns the transcript."""
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
                             "-msg", "-servername", "localhost"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    steps = ([b"R\n"] if renegotiate else []) + \
        [b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"]
    try:
        time.sleep(1)
        for step in steps:
            proc.stdin.write(step)
            proc.stdin.flush()
            time.sleep(1)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the server closed the connection and s_client exited
    out = proc.stdout.read()
    proc.wait(10)
    return out.decode("utf-8", "replace")


def client_renegotiation_refused(port):
    """True when the server answers a client's renegotiation ClientHello without a second
    handshake (no ServerHello: it closes), while the same session without it serves a GET."""
    control = _s_client_session(port, renegotiate=False)
    assert "HTTP/1.1 200" in control, control[-2000:]
    out = _s_client_session(port, renegotiate=True)
    assert "RENEGOTIATING" in out, out[-2000:]
    after = out.split("RENEGOTIATING", 1)[1]
    assert "ClientHello" in after, after[-2000:]
    return "ServerHello" not in after and "HTTP/1.1 200" not in after


def test_client_initiated_renegotiation_is_refused(tls_server):
    """CVE-2011-1473: a client must not make the server redo handshakes on one connection."""
    assert client_renegotiation_refused(tls_server.port)


# ---------------------------------------------------------------------------------------------
# testssl.sh


def _testssl(srv, json_path):
    cmd = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--sneaky",
           "--connect-timeout", "5", "--openssl-timeout", "5", "-p", "-s", "-U",
           "--jsonfile", json_path, f"127.0.0.1:{srv.port}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, timeout=TESTSSL_TIMEOUT,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, TERM="dumb"))
    return proc, time.monotonic() - started


def test_testssl_finds_nothing_vulnerable(rsa_server, tmp_path):
    json_path = str(tmp_path / "testssl.json")
    proc, seconds = _testssl(rsa_server, json_path)
    output = proc.stdout.decode("utf-8", "replace")
    assert os.path.exists(json_path), f"testssl wrote no JSON (exit {proc.returncode}):\n" \
                                      f"{output[-3000:]}\n{proc.stderr.decode()[-2000:]}"
    with open(json_path) as f:
        findings = json.load(f)
    by_id = {f["id"]: f for f in findings}
    # It really scanned: the protocol and vulnerability checks all reported.
    for must in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "heartbleed", "CCS",
                 "ROBOT", "secure_renego", "CRIME_TLS", "POODLE_SSL", "fallback_SCSV", "SWEET32",
                 "FREAK", "LOGJAM", "BEAST", "LUCKY13", "RC4"):
        assert must in by_id, f"testssl did not report {must}: ids {sorted(by_id)}"
    assert by_id["TLS1_2"]["finding"] == "offered", by_id["TLS1_2"]
    assert by_id["TLS1_3"]["finding"].startswith("offered"), by_id["TLS1_3"]
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[old]["finding"] == "not offered", by_id[old]
    bad = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL")
           or ("VULNERABLE" in f.get("finding", "").upper()
               and "NOT VULNERABLE" not in f.get("finding", "").upper())]
    # testssl 3.0.8 false positive: the server refuses a client's renegotiation by closing the
    # connection (close_notify, no ServerHello); when that close races s_client's exit,
    # testssl falls through to its four-"R" retry, which takes s_client's exit code 0 after a
    # close as "renegotiated". Exempt only once the refusal is proven here.
    if any(f["id"] == "secure_client_renego" for f in bad):
        assert client_renegotiation_refused(rsa_server.port), "client renegotiation accepted"
        bad = [f for f in bad if f["id"] != "secure_client_renego"]
    assert not bad, json.dumps(bad, indent=1)
    assert seconds < TESTSSL_TIMEOUT
