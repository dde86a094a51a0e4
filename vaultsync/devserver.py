"""A real dev-mode Vault/OpenBao server on loopback, for the demo and the tests.

The binary is found in this order: ``$VAULTSYNC_SERVER_BIN``, ``bao`` or
``vault`` on ``PATH``, then the one ``make install`` builds into the user's cache
folder. The root token is handed to the server through its environment
(``VAULT_DEV_ROOT_TOKEN_ID``), never on its command line, where any local user
could read it from ``/proc``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from vaultsync.errors import VaultsyncError

#: Pinned server built by ``make install`` (see tools/vault/go.mod and the README).
SERVER_VERSION = "vault-v1.14.1"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaultsync"


def find_server_binary() -> str:
    explicit = os.environ.get("VAULTSYNC_SERVER_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise VaultsyncError(f"VAULTSYNC_SERVER_BIN={explicit} is not an executable file")
        return explicit
    for name in ("bao", "vault"):
        found = shutil.which(name)
        if found:
            return found
    built = cache_dir() / SERVER_VERSION / "vault"
    if os.access(built, os.X_OK):
        return str(built)
    raise VaultsyncError(
        f"no Vault/OpenBao server binary: none on PATH and none at {built}; run `make install` to build it"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DevServer:
    addr: str
    token: str
    pid: int
    log: str

    def stop(self, timeout: float = 10.0) -> None:
        _terminate(self.pid, timeout)


def start(port: int | None = None, *, state_dir: Path, binary: str | None = None, timeout: float = 60.0) -> DevServer:
    """Start a dev server in the background and wait until it answers."""
    binary = binary or find_server_binary()
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)  # an existing folder keeps its mode otherwise
    token = "dev-" + secrets.token_hex(16)  # Vault reserves the s./hvs. prefixes for its own tokens
    addr = f"http://127.0.0.1:{port}"
    log = state_dir / f"server-{port}.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state_dir),  # the dev server writes ~/.vault-token unless told not to
        "VAULT_DEV_ROOT_TOKEN_ID": token,
        "BAO_DEV_ROOT_TOKEN_ID": token,
    }
    # The dev server prints its root token and unseal key: the log is for our user only.
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.fchmod(log_fd, 0o600)  # O_CREAT's mode applies to new files only: tighten an old, permissive log
    with os.fdopen(log_fd, "ab") as out:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    server = DevServer(addr, token, proc.pid, str(log))
    try:
        wait_ready(addr, timeout=timeout, proc=proc)
    except Exception:
        server.stop()
        raise
    return server


def wait_ready(addr: str, *, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise VaultsyncError(f"server exited with code {proc.returncode} before it answered")
        try:
            r = requests.get(f"{addr}/v1/sys/health", timeout=2)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise VaultsyncError(f"server at {addr} did not become ready within {timeout:.0f}s")


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child: poll for existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- `vaultsync dev up/down/status`: one server per port, each remembered in its own state file ---


def _state_dir() -> Path:
    return cache_dir() / "dev"


def _state_file(port: int) -> Path:
    return _state_dir() / f"server-{port}.json"


def up(port: int | None = None) -> DevServer:
    """Start a dev server on ``port``, or return ours already running there. Without a port:
    the one already running (any port), else a new one on a free port. A port someone else
    listens on is an error naming it, never a silent switch to another port."""
    if port is None:
        mine = running_all()
        if mine:
            return mine[0]
    else:
        current = running(port)
        if current is not None:
            return current
        if not port_free(port):
            raise VaultsyncError(f"127.0.0.1:{port} is already in use by another program (not a dev server started by "
                                 "`vaultsync dev up`): pick another --port, or stop it")
    server = start(port, state_dir=_state_dir())
    port = _port_of(server.addr)
    fd = os.open(_state_file(port), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # it holds the root token: an existing file's wider mode is not kept
    with os.fdopen(fd, "w") as f:
        json.dump({"addr": server.addr, "token": server.token, "pid": server.pid, "log": server.log}, f)
    return server


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def running(port: int) -> DevServer | None:
    """Our server on ``port`` if its state file names a live dev server process that answers."""
    state = _state_file(port)
    try:
        info = json.loads(state.read_text())
        server = DevServer(info["addr"], info["token"], int(info["pid"]), info["log"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _port_of(server.addr) != port or not _is_our_dev_server(server.pid, port):
        return None
    try:
        wait_ready(server.addr, timeout=2)
    except VaultsyncError:
        return None
    return server


def _is_our_dev_server(pid: int, port: int) -> bool:
    """The pid is alive *and* is a dev server listening on ``port`` (a recycled pid is left alone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-dev" in argv and f"-dev-listen-address=127.0.0.1:{port}".encode() in argv


def _state_files() -> list[tuple[Path, int]]:
    """Each per-port state file with its port (a file whose name holds no port is skipped)."""
    found = []
    for state in sorted(_state_dir().glob("server-*.json")):
        try:
            found.append((state, int(state.stem.removeprefix("server-"))))
        except ValueError:
            continue
    return found


def running_all() -> list[DevServer]:
    return [server for _, port in _state_files() if (server := running(port)) is not None]


def down(port: int | None = None) -> list[str]:
    """Stop our dev server on ``port`` (or every one of ours); the addresses stopped. A state
    file whose process is gone or is not our server is removed, and nothing is killed for it."""
    stopped = []
    states = [(_state_file(port), port)] if port is not None else _state_files()
    for state, state_port in states:
        server = running(state_port)
        if server is not None:
            server.stop()
            stopped.append(server.addr)
        state.unlink(missing_ok=True)
    return stopped
