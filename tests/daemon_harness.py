"""Run `vaultsync daemon` as a real process and watch it through its files, logs and /metrics."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_servers import free_port

T = TypeVar("T")


class DaemonExited(AssertionError):
    """The daemon died: waiting longer cannot help."""


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except DaemonExited:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class DaemonProc:
    def __init__(self, config: Path, env: dict[str, str], workdir: Path, name: str = "daemon") -> None:
        self.config, self.env, self.workdir = config, env, workdir
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 30) -> DaemonProc:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vaultsync", "--config", str(self.config), "daemon", "--metrics-addr", f"127.0.0.1:{self.port}"],
            env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()
        wait_for(lambda: self._get("/healthz").status_code == 200, timeout, "the daemon's /healthz")
        if wait_ready:
            wait_for(lambda: self._get("/readyz").status_code == 200, timeout, f"/readyz (log: {self.tail()})")
        return self

    def _get(self, path: str) -> requests.Response:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DaemonExited(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")
        return requests.get(self.url + path, timeout=5)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self._get("/metrics").text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), float("nan"))

    def status(self) -> dict[str, Any]:
        return self._get("/status").json()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop on SIGTERM within {timeout}s:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def daemon_env(server: Any, token: str, home: Path) -> dict[str, str]:
    """The daemon's environment: ``server`` is the conftest ``Server`` (address, CA), ``token`` its token."""
    return server.env(home, token)


class TcpCut:
    """A TCP forwarder in front of a server that the test can cut: while cut, connections are
    refused at once (a fast failure, unlike a hung server whose requests wait for the client
    timeout). Bytes pass through untouched, so it works for TLS too."""

    def __init__(self, target_addr: str) -> None:
        import urllib.parse

        url = urllib.parse.urlsplit(target_addr)
        self.scheme, self.target = url.scheme, (url.hostname, url.port)
        self.port = free_port()
        self._listener: Any = None
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        self.restore()

    @property
    def addr(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def restore(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every open connection: new connections are refused."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: Any) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
