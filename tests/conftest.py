"""Real servers for the tests: one Vault/OpenBao per session, a fresh KV mount per test.

Where the server comes from, in order:
1. ``VAULTSYNC_TEST_VAULT_ADDR`` + ``VAULTSYNC_TEST_VAULT_TOKEN`` (+ ``VAULTSYNC_TEST_VAULT_CACERT``):
   an existing server (root-capable token);
2. the local binary (``bao``/``vault`` on PATH, or the one ``make install`` builds), started in
   **server mode** like production (tests/vault_cluster.py): raft storage in a temp folder, a TLS
   listener whose certificate a CA made for this session signed, init + unseal, a file audit device,
   and a second listener that requires a client certificate (``Server.mtls_addr``);
3. testcontainers' Vault container (dev mode, plain HTTP), when a Docker engine answers.
No server: every test that needs one fails with a message saying how to get one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

from tests import vault_cluster
from vaultsync import devserver
from vaultsync.config import VaultSettings
from vaultsync.errors import VaultsyncError

pytest_plugins = ["tests.fixtures_servers", "tests.fixtures_telemetry"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    addr: str
    token: str
    origin: str
    pid: int | None = None  # set when this session started the server process
    cacert: str | None = None  # the CA file a client must trust, when the server speaks TLS
    node: vault_cluster.Node | None = None  # server-mode process: seal/unseal/stop/pause/restart, audit log
    ca: vault_cluster.CA | None = None  # the session's CA (issue client certificates with ca.issue)

    @property
    def mtls_addr(self) -> str | None:
        """Same server, on a listener that requires a client certificate signed by ``ca``."""
        return self.node.mtls_addr if self.node else None

    def client(self, token: str | None = None) -> hvac.Client:
        """A client of this server; with no token it has none (never ``~/.vault-token``)."""
        return hvac.Client(url=self.addr, token=token or "", verify=self.cacert or True)

    def settings(self, **more: object) -> VaultSettings:
        """``VaultSettings`` for in-process vaultsync code talking to this server."""
        return VaultSettings(addr=self.addr, cacert=self.cacert, **more)  # type: ignore[arg-type]

    def env(self, home: Path | str, token: str | None = None) -> dict[str, str]:
        """Environment for a vaultsync process talking to this server: no inherited VAULT_*/BAO_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(VAULT_ADDR=self.addr, HOME=str(home), PYTHONPATH=str(ROOT))
        if token:
            env["VAULT_TOKEN"] = token
        if self.cacert:
            env["VAULT_CACERT"] = self.cacert
        return env


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


@pytest.fixture(scope="session")
def vault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    addr, token = os.environ.get("VAULTSYNC_TEST_VAULT_ADDR"), os.environ.get("VAULTSYNC_TEST_VAULT_TOKEN")
    if addr and token:
        yield Server(addr, token, "VAULTSYNC_TEST_VAULT_ADDR", cacert=os.environ.get("VAULTSYNC_TEST_VAULT_CACERT"))
        return
    binary_error = ""
    try:
        binary = devserver.find_server_binary()
    except VaultsyncError as exc:
        binary, binary_error = None, str(exc)
    if binary:
        yield from _server_mode(binary, tmp_path_factory.mktemp("vault"), session_ca(tmp_path_factory))
        return
    if _docker_answers():
        from testcontainers.community.vault import VaultContainer

        token = uuid.uuid4().hex
        with VaultContainer("hashicorp/vault:1.14.1", root_token=token) as container:
            yield Server(container.get_connection_url(), token, "testcontainers")
        return
    pytest.fail(
        "no Vault/OpenBao server for the tests: set VAULTSYNC_TEST_VAULT_ADDR and VAULTSYNC_TEST_VAULT_TOKEN, "
        f"or run `make install` to build the local server ({binary_error}), or start a Docker engine",
        pytrace=False,
    )


_SESSION_CA: dict[Path, vault_cluster.CA] = {}


def session_ca(tmp_path_factory: pytest.TempPathFactory) -> vault_cluster.CA:
    """One private CA per test session (made here, never committed): every test server's certificate.
    Keyed by the session's temp root: a process that runs several sessions (mutmut) gets one per
    session, never a CA whose folder an earlier session's clean-up removed."""
    base = tmp_path_factory.getbasetemp()
    if base not in _SESSION_CA:
        _SESSION_CA[base] = vault_cluster.make_ca(tmp_path_factory.mktemp("ca"))
    return _SESSION_CA[base]


def _server_mode(binary: str, folder: Path, ca: vault_cluster.CA) -> Iterator[Server]:
    node = vault_cluster.start_single(binary, folder, ca)
    try:
        yield Server(node.addr, node.keys.root_token, binary, node.pid, cacert=ca.cert_file, node=node, ca=ca)
    finally:
        node.stop()


@pytest.fixture(scope="session")
def root(vault_server: Server) -> hvac.Client:
    """A root-token client (for setting up and inspecting; the code under test builds its own)."""
    return vault_server.client(vault_server.token)


def _mount(root: hvac.Client, version: int) -> Iterator[str]:
    path = f"t{version}-{uuid.uuid4().hex[:10]}"
    root.sys.enable_secrets_engine("kv", path=path, options={"version": str(version)})
    try:
        yield path
    finally:
        root.sys.disable_secrets_engine(path)


@pytest.fixture
def kv2(root: hvac.Client) -> Iterator[str]:
    """A fresh KV v2 mount, removed after the test."""
    yield from _mount(root, 2)


@pytest.fixture
def kv1(root: hvac.Client) -> Iterator[str]:
    yield from _mount(root, 1)


@pytest.fixture(params=[1, 2], ids=["kv1", "kv2"])
def kv_any(request: pytest.FixtureRequest, root: hvac.Client) -> Iterator[tuple[str, int]]:
    for mount in _mount(root, request.param):
        yield mount, request.param


@pytest.fixture
def vault_env(vault_server: Server, tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI against the test server (no inherited VAULT_*)."""
    return vault_server.env(tmp_path, vault_server.token)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, env: dict[str, str], cwd: Path | str | None = None, timeout: float = 120) -> Result:
    """Run ``python -m vaultsync ARGS`` as a real process; exit code, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "vaultsync", *args], env=env, cwd=cwd or ROOT, capture_output=True, text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(vault_env: dict[str, str]):
    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | str | None = None) -> Result:
        return run_cli(*args, env={**vault_env, **(env or {})}, cwd=cwd)

    return run


@pytest.fixture
def fresh_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of this test's own (server mode, TLS, same CA), for tests that change server-wide
    state (e.g. pruning policies) or stop, seal and restart it."""
    yield from _server_mode(devserver.find_server_binary(), tmp_path_factory.mktemp("vault-own"), session_ca(tmp_path_factory))


@dataclass(frozen=True)
class LocalUser:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user (setuid in the child: no su/sudo needed)."""
        return subprocess.run(list(argv), user=self.uid, group=self.gid, extra_groups=[], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"}, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def other_user() -> Iterator[LocalUser]:
    """A second, unprivileged OS user (created for this session, removed after): the local attacker
    of the security tests. The tests run as root, as the daemon does in production."""
    if os.geteuid() != 0:
        pytest.fail("the security tests need root (to create a second OS user and to run as a root daemon does)",
                    pytrace=False)
    import pwd

    name = f"vs{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"useradd {name} failed: {made.stderr.strip()}", pytrace=False)
    try:
        entry = pwd.getpwnam(name)
        yield LocalUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True)
