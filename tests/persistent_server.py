"""A server-mode Vault with file storage that a test can stop, restart, seal and unseal
(its state survives). Issue 11's outage tests use it until the shared TLS fixture of
issue 8 offers the same helpers; the lead reconciles the two."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Server
from tests.fixtures_servers import free_port
from vaultsync import devserver


class PersistentVault:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        (state_dir / "data").mkdir(parents=True, exist_ok=True)
        self.config = state_dir / "server.hcl"
        self.config.write_text(
            f'storage "file" {{\n  path = "{state_dir / "data"}"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'disable_mlock = true\napi_addr = "{self.addr}"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.unseal_key = ""
        self.token = ""

    @property
    def server(self) -> Server:
        """The conftest ``Server`` for clients and daemon environments (its pid changes on restart)."""
        assert self.proc is not None
        return Server(self.addr, self.token, "file-storage", self.proc.pid)

    def _answering(self) -> bool:
        try:
            requests.get(f"{self.addr}/v1/sys/health", timeout=1)
            return True
        except requests.RequestException:
            return False

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen([devserver.find_server_binary(), "server", f"-config={self.config}"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir)})
        log.close()
        deadline = time.monotonic() + 30
        while not self._answering():
            assert self.proc.poll() is None, (self.dir / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "file-storage server did not answer"
            time.sleep(0.1)
        if not self.unseal_key:
            init = requests.put(f"{self.addr}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=10).json()
            self.unseal_key, self.token = init["keys_base64"][0], init["root_token"]
        self.unseal()

    def unseal(self) -> None:
        requests.put(f"{self.addr}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=10).raise_for_status()
        devserver.wait_ready(self.addr, timeout=30)

    def seal(self) -> None:
        requests.put(f"{self.addr}/v1/sys/seal", headers={"X-Vault-Token": self.token}, timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def persistent_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PersistentVault]:
    vault = PersistentVault(tmp_path_factory.mktemp("vault-file"))
    vault.start()
    try:
        yield vault
    finally:
        vault.stop()
