"""Real servers other than Vault, as session-scoped pytest fixtures.

Registered from tests/conftest.py with ``pytest_plugins = ["tests.fixtures_servers"]``.

* ``postgres_server``: a throwaway PostgreSQL cluster (Debian's ``postgresql``
  package), run as the ``postgres`` OS user, on 127.0.0.1 and a free port, with
  a superuser ``vaultadmin`` for Vault's database secrets engine.
* ``prometheus_server``: a factory that starts ``/usr/bin/prometheus``
  (Debian's ``prometheus`` package) with a given config and rules folder.

No fakes: when a binary is missing the fixture fails and says which Debian
package to install.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

PG_ROOT = Path("/usr/lib/postgresql")
PROMETHEUS_BIN = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- PostgreSQL ---------------------------------------------------------------------------


def find_postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin that has initdb and pg_ctl."""
    candidates = []
    if PG_ROOT.is_dir():
        for d in PG_ROOT.iterdir():
            if d.name.isdigit() and (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file():
                candidates.append(d)
    if not candidates:
        pytest.fail(
            f"PostgreSQL server binaries not found under {PG_ROOT}/<version>/bin: "
            "install Debian package postgresql (apt-get install -y postgresql)",
            pytrace=False,
        )
    return max(candidates, key=lambda d: int(d.name)) / "bin"


@dataclass
class PostgresServer:
    host: str
    port: int
    admin_user: str
    admin_password: str = field(repr=False)
    data_dir: Path
    socket_dir: Path
    log: Path
    version: str
    dbname: str = "postgres"

    @property
    def url(self) -> str:
        """``postgresql://`` URL for the admin role (it holds the password: keep it out of logs)."""
        pw = urllib.parse.quote(self.admin_password, safe="")
        return f"postgresql://{self.admin_user}:{pw}@{self.host}:{self.port}/{self.dbname}"

    def connect(self, user: str | None = None, password: str | None = None, dbname: str | None = None, **kwargs: Any):
        """A psycopg (v3) connection over TCP; defaults to the admin role. Autocommit is on."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=user or self.admin_user,
            password=password if password is not None else self.admin_password,
            dbname=dbname or self.dbname,
            connect_timeout=10,
            autocommit=True,
            **kwargs,
        )


def _run_as(user: str, argv: list[str], *, timeout: float = 120, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv as ``user`` (root drops to it with runuser; anyone else must already be it)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    elif pwd.getpwuid(os.geteuid()).pw_name != user:
        pytest.fail(f"PostgreSQL must run as the {user!r} OS user: run the tests as root or as {user}", pytrace=False)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")
    if proc.returncode != 0:
        extra = f"\n--- server log ---\n{_tail(log)}" if log else ""
        pytest.fail(
            f"{' '.join(argv)} failed with exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}{extra}",
            pytrace=False,
        )
    return proc


def _pg_ctl(bindir: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(bindir / "pg_ctl"), "-D", str(data_dir), *args]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/", timeout=90)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_postgres_bindir()
    try:
        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("OS user 'postgres' does not exist: install Debian package postgresql", pytrace=False)

    # Not under pytest's temp folder: that one is 0700 root, and the postgres
    # OS user must reach its data folder. This one is 0700 postgres.
    base = Path(tempfile.mkdtemp(prefix="vaultsync-pg-"))
    data_dir, socket_dir, log = base / "data", base / "sock", base / "server.log"
    started = False
    try:
        os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
        for d in (data_dir, socket_dir):
            d.mkdir(mode=0o700)
            os.chown(d, pg_user.pw_uid, pg_user.pw_gid)
        log.touch(mode=0o600)
        os.chown(log, pg_user.pw_uid, pg_user.pw_gid)

        admin, password = "vaultadmin", secrets.token_urlsafe(24)
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        os.chown(pwfile, pg_user.pw_uid, pg_user.pw_gid)
        # The bootstrap superuser is `vaultadmin` itself, with a SCRAM password.
        # TCP (127.0.0.1 only) needs the password; the unix socket, inside our
        # private folder, admits only the postgres OS user (peer).
        _run_as("postgres", [
            str(bindir / "initdb"), "-D", str(data_dir), "-U", admin, f"--pwfile={pwfile}",
            "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions",
        ], log=log)
        pwfile.unlink()

        port = free_port()
        opts = " ".join([
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            f"-c unix_socket_directories={socket_dir}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=100",
            "-c password_encryption=scram-sha-256",
        ])
        started = True
        _run_as("postgres", [str(bindir / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"], log=log)
        version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
        server = PostgresServer("127.0.0.1", port, admin, password, data_dir, socket_dir, log, version)
        try:
            with server.connect() as conn:
                conn.execute("select 1")
        except Exception as exc:  # noqa: BLE001 - report any failure with the server log
            pytest.fail(f"PostgreSQL started but the admin login failed: {exc}\n--- server log ---\n{_tail(log)}", pytrace=False)
        yield server
    finally:
        if started:
            _pg_ctl(bindir, data_dir, "-m", "fast", "-w", "-t", "30", "stop")
        shutil.rmtree(base, ignore_errors=True)


# --- Prometheus ---------------------------------------------------------------------------


class PrometheusError(AssertionError):
    pass


@dataclass
class PrometheusServer:
    url: str
    config_file: Path
    storage: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def get(self, path: str, params: Mapping[str, Any] | None = None, timeout: float = 10) -> Any:
        """GET an API path and return ``data`` of the JSON answer (raises on an error status)."""
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PrometheusError(f"GET {path}{query}: HTTP {exc.code}: {detail}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path}{query}: {body}")
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if time is not None:
            params["time"] = time
        return self.get("/api/v1/query", params)["result"]

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every loaded group (``/api/v1/rules``)."""
        return [rule for group in self.get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def alerts(self, name: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Active alerts (``/api/v1/alerts``), optionally only one alert name and/or state (pending|firing)."""
        found = self.get("/api/v1/alerts")["alerts"]
        return [
            a for a in found
            if (name is None or a["labels"].get("alertname") == name) and (state is None or a["state"] == state)
        ]

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets")["activeTargets"]

    def wait_for_alert(self, name: str, state: str = "firing", timeout: float = 60, interval: float = 0.5,
                       match: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Poll until alert ``name`` is in ``state``; returns the matching alerts or raises with what was seen."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.alerts()
            hits = [a for a in seen if a["labels"].get("alertname") == name and a["state"] == state and (match is None or match(a))]
            if hits:
                return hits
            time.sleep(interval)
        raise PrometheusError(f"alert {name} not {state} within {timeout:.0f}s; active alerts: {json.dumps(seen, indent=1)}")

    def stop(self) -> None:
        _stop_process(self.proc)


def _find_prometheus() -> str:
    binary = PROMETHEUS_BIN if os.access(PROMETHEUS_BIN, os.X_OK) else shutil.which("prometheus")
    if not binary:
        pytest.fail(
            f"{PROMETHEUS_BIN} not found: install Debian package prometheus (apt-get install -y prometheus)",
            pytrace=False,
        )
    return binary


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, name: str = "prometheus") -> None:
    """Until ``url``/-/ready answers 200 (Prometheus, Alertmanager); fails with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with code {proc.returncode}:\n{_tail(log)}", pytrace=False)
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    _stop_process(proc)
    pytest.fail(f"{name} at {url} not ready within {timeout:.0f}s:\n{_tail(log)}", pytrace=False)


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: ``prometheus_server(config, rules_dir=None, *, extra_args=(), timeout=60)``.

    ``config`` is a path to a prometheus.yml, a YAML string or a dict. It is
    copied into a fresh folder; when ``rules_dir`` is given, ``rule_files`` is
    replaced by ``<rules_dir>/*.yml`` (absolute), otherwise relative
    ``rule_files`` keep resolving against the original file's folder. Each call
    starts its own server on 127.0.0.1:<free port>; all are stopped at the end
    of the session.
    """
    binary = _find_prometheus()
    started: list[PrometheusServer] = []

    def start(config: str | os.PathLike[str] | Mapping[str, Any], rules_dir: str | os.PathLike[str] | None = None, *,
              extra_args: tuple[str, ...] = (), timeout: float = 60) -> PrometheusServer:
        base = tmp_path_factory.mktemp("prometheus")
        origin: Path | None = None
        if isinstance(config, Mapping):
            cfg = dict(config)
        elif isinstance(config, os.PathLike) or (isinstance(config, str) and "\n" not in config and Path(config).is_file()):
            origin = Path(config).resolve()
            cfg = yaml.safe_load(origin.read_text()) or {}
        else:
            cfg = yaml.safe_load(config) or {}
        if rules_dir is not None:
            cfg["rule_files"] = [str(Path(rules_dir).resolve() / "*.yml")]
        elif origin is not None and cfg.get("rule_files"):
            cfg["rule_files"] = [p if os.path.isabs(p) else str(origin.parent / p) for p in cfg["rule_files"]]
        config_file = base / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        storage, log = base / "data", base / "prometheus.log"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={config_file}", f"--storage.tsdb.path={storage}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=info", *extra_args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base, start_new_session=True,
            )
        _wait_ready(url, proc, log, timeout)
        server = PrometheusServer(url, config_file, storage, log, proc)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
