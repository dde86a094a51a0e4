"""The metrics/health HTTP server (issue 10, finding 4) with real sockets.

Half-sent requests must not hold threads for ever, the number of connections served at once is
bounded, and /status (paths, render errors) answers only loopback clients unless a bearer token
is configured.
"""

from __future__ import annotations

import socket
import threading
import time

import requests

from tests.daemon_harness import wait_for
from vaultsync.metrics import HealthServer, Metrics, _is_loopback

STATUS = {"services": {"api": {"destinations": {"/srv/api/.env": {"error": "boom"}}}}}


def _server(addr: str = "127.0.0.1:0", **kw) -> HealthServer:
    server = HealthServer(addr, Metrics(), lambda: True, lambda: STATUS, **kw)
    server.start()
    return server


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_half_sent_requests_are_cut_off_and_bounded(capfd):
    server = _server(timeout=1.0, max_workers=4)
    port = int(server.address.rsplit(":", 1)[1])
    before = threading.active_count()
    socks = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metr")  # and never the rest
            socks.append(s)
        time.sleep(0.3)
        # at most 4 workers (and their deadline timers) while 40 clients hang
        assert threading.active_count() - before <= 2 * 4, threading.active_count() - before
        wait_for(lambda: all(_closed_by_server(s) for s in socks), 10, "every half-sent connection closed by the server")
        t0 = time.monotonic()
        assert requests.get(f"http://{server.address}/healthz", timeout=5).text == "ok\n"
        assert time.monotonic() - t0 < 1
        wait_for(lambda: threading.active_count() <= before, 5, "the worker threads gone")
    finally:
        for s in socks:
            s.close()
        server.stop()
    assert "Traceback" not in capfd.readouterr().err  # cut-off clients are not news on stderr


def test_a_trickling_client_is_cut_off_at_the_connection_deadline():
    server = _server(timeout=1.0)
    port = int(server.address.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    try:
        t0 = time.monotonic()
        closed = False
        for ch in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            if _closed_by_server(s):
                closed = True
                break
            time.sleep(0.1)  # each byte well within the per-read timeout
        assert closed and time.monotonic() - t0 < 3
    finally:
        s.close()
        server.stop()


def test_status_details_only_on_loopback():
    # Tests send traffic to loopback only (the machine's other addresses are off limits), so the
    # refusal of a remote client is checked on the decision the handler makes from its address.
    server = _server("127.0.0.1:0")
    port = int(server.address.rsplit(":", 1)[1])
    try:
        assert requests.get(f"http://127.0.0.1:{port}/status", timeout=5).json() == STATUS
    finally:
        server.stop()
    for remote in ("10.1.2.3", "192.168.1.20", "::ffff:10.1.2.3", "2001:db8::1", "0.0.0.0"):
        assert not _is_loopback(remote), remote
    for local in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        assert _is_loopback(local), local


def test_status_with_a_bearer_token_needs_it_even_on_loopback():
    token = "s3cret-status-token-0123456789"
    server = _server("127.0.0.1:0", status_token=token)
    port = int(server.address.rsplit(":", 1)[1])
    try:
        assert requests.get(f"http://127.0.0.1:{port}/status", timeout=5).status_code == 403
        assert requests.get(f"http://127.0.0.1:{port}/status", headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 403
        ok = requests.get(f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert ok.json() == STATUS
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        server.stop()
