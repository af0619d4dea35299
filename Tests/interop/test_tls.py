"""TLS refusals (old protocol versions, no ALPN h2, plaintext) and mutual TLS."""

import socket
import ssl
import subprocess
import time

import grpc
import pytest

from interop_support import (CA_PEM, RPC_TIMEOUT, RawH2, empty_pb2, h2_preface_and_settings,
                             make_channel, interop_stub, shared_server_fixture,
                             tls_client_context, tls_connect)

HANDSHAKE_FAILURES = (ssl.SSLError, ConnectionError, socket.timeout, TimeoutError, OSError)


def old_tls_context(version):
    return tls_client_context(alpn=["h2"], min_version=version, max_version=version,
                              ciphers="DEFAULT:@SECLEVEL=0")


def read_until_closed(sock, timeout: float) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or `timeout` passes (False)."""
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except (ssl.SSLError, ConnectionError, OSError):
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def test_tls12_handshake_succeeds(interop_server):
    """Positive control for the TLS 1.1 refusal: the same client code with TLS 1.2."""
    with tls_connect(interop_server.port, old_tls_context(ssl.TLSVersion.TLSv1_2)) as s:
        assert s.version() == "TLSv1.2"
        assert s.selected_alpn_protocol() == "h2"


def test_tls13_handshake_succeeds(interop_server):
    ctx = tls_client_context(min_version=ssl.TLSVersion.TLSv1_3)
    with tls_connect(interop_server.port, ctx) as s:
        assert s.version() == "TLSv1.3"
        assert s.selected_alpn_protocol() == "h2"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1],
                         ids=["TLSv1.1", "TLSv1.0"])
def test_old_tls_refused(interop_server, version):
    with pytest.raises(HANDSHAKE_FAILURES):
        with tls_connect(interop_server.port, old_tls_context(version)) as s:
            pytest.fail(f"handshake succeeded with {s.version()}")
    # The server still serves after the refused handshake.
    with make_channel(interop_server.port) as ch:
        interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "alpn-http1.1"])
def test_without_alpn_h2_no_http2_session(interop_server, alpn):
    ctx = tls_client_context(alpn=alpn)
    try:
        sock = tls_connect(interop_server.port, ctx)
    except HANDSHAKE_FAILURES:
        return  # refused in the handshake: fine
    with sock:
        assert sock.selected_alpn_protocol() != "h2"
        # Speak HTTP/2 anyway: the server must not serve it on this connection.
        try:
            sock.sendall(h2_preface_and_settings()
                         + b"\x00\x00\x00\x01\x05\x00\x00\x00\x01")  # empty HEADERS, END_STREAM
        except OSError:
            return
        got, closed = read_until_closed(sock, timeout=5)
        assert closed, f"connection without ALPN h2 still open after 5 s (got {got[:60]!r})"
        settings = len(got) >= 9 and got[3] == 0x04
        assert not settings, f"server answered HTTP/2 SETTINGS without ALPN h2: {got[:60]!r}"


def test_alpn_h2_positive_control(interop_server):
    with RawH2(interop_server.port) as conn:
        assert conn.sock.selected_alpn_protocol() == "h2"
        assert conn.empty_call().grpc_status == 0


def test_plaintext_http2_preface_closed(interop_server):
    with socket.create_connection(("127.0.0.1", interop_server.port), timeout=5) as sock:
        sock.sendall(h2_preface_and_settings())
        got, closed = read_until_closed(sock, timeout=5)
    assert closed, f"plaintext connection still open after 5 s (got {got[:60]!r})"
    # An HTTP/2 frame header of type SETTINGS (0x4) would mean the server spoke HTTP/2 in the
    # clear; a TLS alert record starts 0x15 0x03.
    settings = len(got) >= 9 and got[3] == 0x04 and got[0] != 0x15
    assert not settings, f"server answered a plaintext HTTP/2 SETTINGS frame: {got[:60]!r}"


def test_plaintext_garbage_closed(interop_server):
    with socket.create_connection(("127.0.0.1", interop_server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        _, closed = read_until_closed(sock, timeout=5)
    assert closed
    with make_channel(interop_server.port) as ch:
        interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)


def test_idle_connection_without_handshake_does_not_block_others(interop_server):
    """A TCP client that never starts TLS does not stop the server from serving others."""
    with socket.create_connection(("127.0.0.1", interop_server.port), timeout=5):
        with make_channel(interop_server.port) as ch:
            start = time.monotonic()
            interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
            assert time.monotonic() - start < 3.0


# --------------------------------------------------------------------------------------------
# Mutual TLS


_mtls_slot, mtls_server = shared_server_fixture("mtls_server", client_ca=True)


def test_mtls_with_client_certificate(mtls_server):
    with make_channel(mtls_server.port, client_cert=True) as ch:
        assert interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT) == empty_pb2.Empty()


def test_mtls_without_client_certificate_refused(mtls_server):
    with make_channel(mtls_server.port) as ch:
        with pytest.raises(grpc.RpcError) as err:
            interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()


def test_mtls_raw_without_certificate_refused(mtls_server):
    """Without a client certificate the handshake fails (TLS 1.2) or the server's alert ends
    the connection right after it (TLS 1.3): no SETTINGS frame arrives."""
    try:
        conn = RawH2(mtls_server.port)
    except HANDSHAKE_FAILURES:
        return
    with conn:
        assert not conn.wait_settings(3), "server sent HTTP/2 SETTINGS to a client without cert"


def test_mtls_raw_with_certificate(mtls_server):
    with RawH2(mtls_server.port, ctx=tls_client_context(client_cert=True)) as conn:
        assert conn.empty_call().grpc_status == 0


def test_mtls_untrusted_client_certificate_refused(mtls_server, tmp_path):
    """A self-signed client certificate, not issued by the configured CA, is refused."""
    key, cert = tmp_path / "rogue.key", tmp_path / "rogue.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=rogue-client"], check=True, capture_output=True,
                   timeout=30)
    creds = grpc.ssl_channel_credentials(root_certificates=CA_PEM.read_bytes(),
                                         private_key=key.read_bytes(),
                                         certificate_chain=cert.read_bytes())
    with make_channel(mtls_server.port, credentials=creds) as ch:
        with pytest.raises(grpc.RpcError) as err:
            interop_stub(ch).EmptyCall(empty_pb2.Empty(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    ctx = tls_client_context(cert_file=str(cert), key_file=str(key))
    try:
        conn = RawH2(mtls_server.port, ctx=ctx)
    except HANDSHAKE_FAILURES:
        return
    with conn:
        assert not conn.wait_settings(3), "server sent SETTINGS to an untrusted client certificate"
