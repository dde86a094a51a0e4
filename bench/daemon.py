"""Benchmark: `vaultsync daemon` against `vault agent` keeping N services' env files alive.

Each service has one KV v2 secret (``secret/compose/svcNN``, a few keys) and one dynamic
lease (``database/creds/svcNN``: Vault's database secrets engine on a real PostgreSQL, with
a short default TTL so leases are renewed during the run), rendered into one env file.
For each contender, in turn and alone on the machine, the bench starts a fresh Vault dev
server (the pinned binary, telemetry on, a file audit device), sets up the same secrets,
roles and identity, then runs the contender for ``--seconds``:

  vaultsync  ``python -m vaultsync daemon``: one ``[services.svcNN]`` each with
             ``dynamic = { db = "database/creds/svcNN" }`` and one dotenv destination,
             ``poll_interval`` = ``--poll``
  agent      ``vault agent -config=agent.hcl`` (the same binary): ``auto_auth`` and one
             ``template`` stanza per service rendering the same variables (KV keys,
             ``DB_USERNAME``, ``DB_PASSWORD``) in the same format,
             ``static_secret_render_interval`` = ``--poll``

Both authenticate the same way (``--auth token``: a renewable token in a file, read by
``vault.token_file`` / the agent's ``token_file`` method; ``--auth approle``: one AppRole,
role_id/secret_id files). Both logs go to files at the default (info) level.

Measured over the window from the contender's launch to ``--seconds`` later:
  RSS       VmRSS of the process and all its descendants, sampled every 0.5 s (peak, mean)
  CPU       utime+stime of the process tree from /proc/<pid>/stat (plus cutime/cstime of
            reaped children)
  requests  counted by the contender's own Vault server: response entries in the file
            audit log (exact, with a per-endpoint breakdown); the server's telemetry
            counter ``vault_core_handle_request_count`` is shown as a cross-check
Then, with the contender still running, every file is checked: it parses with
python-dotenv to exactly the KV keys/values written plus DB_USERNAME/DB_PASSWORD, and every
rendered database credential logs in to PostgreSQL.

Usage: python bench/daemon.py [--services 50] [--seconds 60] [--poll 10s] [--auth token|approle]
       [--lease-ttl 30s] [--lease-max-ttl 120s] [--token-ttl 60s] [--only vaultsync|agent]

Needs root (PostgreSQL runs as the ``postgres`` OS user) or to be run as ``postgres``.
Every process it starts is stopped on exit, Ctrl-C or SIGTERM (and is sent SIGKILL by the
kernel should the bench itself be killed); its temporary folder is removed unless --keep.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import requests
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaultsync import devserver  # noqa: E402
from vaultsync.leases import parse_duration  # noqa: E402

PG_ROOT = Path("/usr/lib/postgresql")
CLK_TCK = os.sysconf("SC_CLK_TCK")
KV_MOUNT, KV_PREFIX, DB_MOUNT = "secret", "compose", "database"
# Sorted before DB_*, so both contenders' files come out in the same line order.
KV_KEYS = ("API_TOKEN", "APP_SECRET", "AUTH_SALT", "CACHE_PASSWORD", "COOKIE_KEY")
SAMPLE_EVERY = 0.5

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _as_user(user: str | None):
    """preexec_fn: drop to ``user`` (when root), then die with the bench (PDEATHSIG is reset
    by a credential change, so it is set after it)."""
    pw = pwd.getpwnam(user) if user and os.geteuid() == 0 else None

    def preexec() -> None:
        if pw is not None:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        _die_with_parent()

    return preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class BenchError(RuntimeError):
    pass


# --- processes we started ------------------------------------------------------------------


class Processes:
    """Every process the bench starts, each in its own session; stopped by pid, newest first."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def spawn(self, name: str, argv: list[str], *, log: Path, env: dict[str, str], cwd: Path | None = None,
              user: str | None = None, stop_signal: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=cwd, start_new_session=True, preexec_fn=_as_user(user))
        self.procs.append((name, proc, stop_signal))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
        entry = next((e for e in self.procs if e[1] is proc), None)
        sig = entry[2] if entry else signal.SIGTERM
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                print(f"  {entry[0] if entry else proc.pid} did not stop within {timeout:.0f}s: SIGKILL", file=sys.stderr)
                # Its process group (it leads its own session) is it and its children; it is not
                # reaped yet, so the id cannot have been reused.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if entry:
            self.procs.remove(entry)
        return proc.returncode

    def stop_all(self) -> None:
        for _, proc, _ in reversed(list(self.procs)):
            self.stop(proc)


# --- /proc sampling ---------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # fields from #3 (state) on; comm may hold spaces


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                children.setdefault(int(st[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of these processes, each with its reaped children."""
    user = system = 0
    for p in pids:
        st = _stat(p)
        if st:
            user += int(st[11]) + int(st[13])
            system += int(st[12]) + int(st[14])
    return user / CLK_TCK, system / CLK_TCK


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name=f"sampler-{pid}")
        self.pid = pid
        self.rss: list[int] = []  # KiB, whole tree
        self.cpu = (0.0, 0.0)
        self.nprocs = 1
        self.halt = threading.Event()

    def sample(self) -> None:
        pids = tree(self.pid)
        self.nprocs = max(self.nprocs, len(pids))
        total = sum(rss_kib(p) for p in pids)
        cpu = cpu_seconds(pids)
        if total:
            self.rss.append(total)
        if sum(cpu) >= sum(self.cpu):
            self.cpu = cpu

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(SAMPLE_EVERY)

    def finish(self) -> None:
        self.halt.set()
        self.join()
        self.sample()


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    user: str
    password: str = field(repr=False)
    proc: subprocess.Popen[bytes] | None = None

    def connect(self, user: str | None = None, password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user or self.user,
                               password=self.password if password is None else password, dbname="postgres",
                               connect_timeout=10, autocommit=True)


def start_postgres(procs: Processes, base: Path) -> Postgres:
    dirs = [PG_ROOT / d / "bin" for d in os.listdir(PG_ROOT)] if PG_ROOT.is_dir() else []
    dirs = [d for d in dirs if (d / "initdb").is_file() and d.parent.name.isdigit()]
    if not dirs:
        raise BenchError(f"no PostgreSQL under {PG_ROOT}/<version>/bin: apt-get install -y postgresql")
    bindir = max(dirs, key=lambda d: int(d.parent.name))
    try:
        pg = pwd.getpwnam("postgres")
    except KeyError:
        raise BenchError("OS user 'postgres' does not exist: apt-get install -y postgresql") from None
    if os.geteuid() not in (0, pg.pw_uid):
        raise BenchError("PostgreSQL must run as the 'postgres' OS user: run the bench as root or as postgres")
    pgdir = base / "pg"
    data, sock, log = pgdir / "data", pgdir / "sock", pgdir / "server.log"
    for d in (pgdir, data, sock):
        d.mkdir(mode=0o700)
        os.chown(d, pg.pw_uid, pg.pw_gid)
    os.chmod(base, 0o711)  # the postgres user must traverse it
    admin, password = "vaultadmin", secrets.token_urlsafe(24)
    pwfile = pgdir / "pwfile"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    os.chown(pwfile, pg.pw_uid, pg.pw_gid)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", admin, f"--pwfile={pwfile}", "--auth-local=peer",
         "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/", preexec_fn=_as_user("postgres"), timeout=120,
    )
    pwfile.unlink()
    if init.returncode:
        raise BenchError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = free_port()
    log.touch()
    os.chown(log, pg.pw_uid, pg.pw_gid)
    argv = [str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
            "-c", f"unix_socket_directories={sock}", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "password_encryption=scram-sha-256"]
    # SIGINT is PostgreSQL's "fast shutdown".
    proc = procs.spawn("postgres", argv, log=log, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=Path("/"),
                       user="postgres", stop_signal=signal.SIGINT)
    server = Postgres(port, admin, password, proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise BenchError(f"postgres exited with {proc.returncode}:\n{tail(log)}")
        try:
            with server.connect() as conn:
                conn.execute("select 1")
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise BenchError(f"postgres did not accept logins within 60 s:\n{tail(log)}") from None
            time.sleep(0.2)


def can_login(pg: Postgres, user: str, password: str) -> bool:
    try:
        with pg.connect(user, password) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


# --- one fresh Vault server per contender --------------------------------------------------------


@dataclass
class Vault:
    addr: str
    token: str = field(repr=False)
    proc: subprocess.Popen[bytes]
    audit_log: Path
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        r = self.session.request(method, f"{self.addr}/v1/{path}", headers={"X-Vault-Token": self.token}, timeout=30, **kw)
        if r.status_code >= 400:
            raise BenchError(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else {}

    def handled_requests(self) -> int:
        r = self.session.get(f"{self.addr}/v1/sys/metrics", params={"format": "prometheus"},
                             headers={"X-Vault-Token": self.token}, timeout=10)
        r.raise_for_status()
        for line in r.text.splitlines():
            if line.startswith("vault_core_handle_request_count"):
                return int(float(line.split()[-1]))
        return 0


def start_vault(procs: Processes, workdir: Path, binary: str) -> Vault:
    port = free_port()
    token = "bench-" + secrets.token_hex(16)
    cfg = workdir / "server.hcl"
    cfg.write_text('telemetry {\n  prometheus_retention_time = "1h"\n  disable_hostname = true\n}\n')
    log = workdir / "server.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "VAULT_DEV_ROOT_TOKEN_ID": token}
    proc = procs.spawn("vault server", [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
                                        "-dev-no-store-token", f"-config={cfg}"], log=log, env=env, cwd=workdir)
    addr = f"http://127.0.0.1:{port}"
    try:
        devserver.wait_ready(addr, timeout=60, proc=proc)
    except Exception as exc:
        raise BenchError(f"vault server did not start: {exc}\n{tail(log)}") from None
    return Vault(addr, token, proc, workdir / "audit.log")


@dataclass
class Fixture:
    """What was set up in one server, the same for both contenders."""

    kv: dict[str, dict[str, str]]  # service -> the KV data written
    auth_files: dict[str, Path]


def setup_vault(v: Vault, pg: Postgres, workdir: Path, args: argparse.Namespace, names: list[str]) -> Fixture:
    v.call("PUT", "sys/policies/acl/bench", json={"policy": 'path "*" {\n  capabilities = ["create", "read", "update", '
                                                           '"delete", "list", "sudo"]\n}\n'})
    kv: dict[str, dict[str, str]] = {}
    for name in names:
        kv[name] = {k: secrets.token_urlsafe(18) for k in KV_KEYS}
        v.call("POST", f"{KV_MOUNT}/data/{KV_PREFIX}/{name}", json={"data": kv[name]})
    v.call("POST", f"sys/mounts/{DB_MOUNT}", json={"type": "database"})
    v.call("POST", f"{DB_MOUNT}/config/pg", json={
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg.port}/postgres?sslmode=disable",
        "username": pg.user, "password": pg.password, "allowed_roles": ["*"], "verify_connection": True,
    })
    for name in names:
        v.call("POST", f"{DB_MOUNT}/roles/{name}", json={
            "db_name": "pg",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            "default_ttl": args.lease_ttl, "max_ttl": args.lease_max_ttl,
        })
    files: dict[str, Path] = {}
    if args.auth == "token":
        tok = v.call("POST", "auth/token/create", json={"policies": ["bench"], "ttl": args.token_ttl, "renewable": True})
        files["token"] = workdir / "token"
        files["token"].write_text(tok["auth"]["client_token"] + "\n")
    else:
        v.call("POST", "sys/auth/approle", json={"type": "approle"})
        v.call("POST", "auth/approle/role/bench", json={"token_policies": ["bench"], "token_ttl": args.token_ttl,
                                                         "token_max_ttl": args.token_max_ttl})
        role_id = v.call("GET", "auth/approle/role/bench/role-id")["data"]["role_id"]
        secret_id = v.call("POST", "auth/approle/role/bench/secret-id")["data"]["secret_id"]
        files["role_id"], files["secret_id"] = workdir / "role_id", workdir / "secret_id"
        files["role_id"].write_text(role_id + "\n")
        files["secret_id"].write_text(secret_id + "\n")
    for f in files.values():
        os.chmod(f, 0o600)
    v.call("POST", "sys/audit/file", json={"type": "file", "options": {"file_path": str(v.audit_log)}})
    return Fixture(kv, files)


# --- the contenders --------------------------------------------------------------------------


def vaultsync_config(workdir: Path, v: Vault, fx: Fixture, args: argparse.Namespace, names: list[str], metrics_port: int) -> Path:
    if args.auth == "token":
        auth = '[auth]\nmethod = "token"\n'
        token_file = f'token_file = "{fx.auth_files["token"]}"\n'
    else:
        auth = (f'[auth]\nmethod = "approle"\nmount = "approle"\nrole_name = "bench"\n'
                f'role_id_file = "{fx.auth_files["role_id"]}"\nsecret_id_file = "{fx.auth_files["secret_id"]}"\n'
                f'remove_secret_id_file = false\n')
        token_file = ""
    body = [
        f'[vault]\naddr = "{v.addr}"\n{token_file}timeout = "30s"\n',
        f'[kv]\nmount = "{KV_MOUNT}"\nprefix = "{KV_PREFIX}"\nversion = 2\n',
        auth,
        f'[daemon]\npoll_interval = "{args.poll}"\nmetrics_addr = "127.0.0.1:{metrics_port}"\n',
    ]
    for name in names:
        body.append(f'[services.{name}]\ndynamic = {{ db = "{DB_MOUNT}/creds/{name}" }}\n'
                    f'[[services.{name}.destinations]]\npath = "{workdir / "out" / (name + ".env")}"\nstyle = "dotenv"\n')
    path = workdir / "vaultsync.toml"
    path.write_text("\n".join(body))
    return path


# Same lines as vaultsync's dotenv style for these values: KEY='value', sorted by key (Go's
# template `range` over a map is sorted), the KV keys sort before DB_*.
AGENT_TEMPLATE = """\
{{{{ with secret "{kv}" }}}}{{{{ range $k, $v := .Data.data }}}}{{{{ $k }}}}='{{{{ $v }}}}'
{{{{ end }}}}{{{{ end }}}}{{{{ with secret "{db}" }}}}DB_PASSWORD='{{{{ .Data.password }}}}'
DB_USERNAME='{{{{ .Data.username }}}}'
{{{{ end }}}}"""


def agent_config(workdir: Path, v: Vault, fx: Fixture, args: argparse.Namespace, names: list[str]) -> Path:
    if args.auth == "token":
        method = f'  method "token_file" {{\n    config = {{\n      token_file_path = "{fx.auth_files["token"]}"\n    }}\n  }}\n'
    else:
        method = (f'  method "approle" {{\n    mount_path = "auth/approle"\n    config = {{\n'
                  f'      role_id_file_path = "{fx.auth_files["role_id"]}"\n'
                  f'      secret_id_file_path = "{fx.auth_files["secret_id"]}"\n'
                  f'      remove_secret_id_file_after_reading = false\n    }}\n  }}\n')
    parts = [
        f'pid_file = "{workdir / "agent.pid"}"\n',
        f'vault {{\n  address = "{v.addr}"\n}}\n',
        f'auto_auth {{\n{method}}}\n',
        f'template_config {{\n  static_secret_render_interval = "{args.poll}"\n  exit_on_retry_failure = true\n}}\n',
    ]
    for name in names:
        tmpl = workdir / "templates" / f"{name}.ctmpl"
        tmpl.write_text(AGENT_TEMPLATE.format(kv=f"{KV_MOUNT}/data/{KV_PREFIX}/{name}", db=f"{DB_MOUNT}/creds/{name}"))
        parts.append(f'template {{\n  source = "{tmpl}"\n  destination = "{workdir / "out" / (name + ".env")}"\n'
                     f'  perms = "0600"\n  error_on_missing_key = true\n}}\n')
    path = workdir / "agent.hcl"
    path.write_text("\n".join(parts))
    return path


def clean_env(home: Path) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return env


# --- checking and counting ----------------------------------------------------------------------


def all_rendered(out: Path, fx: Fixture) -> bool:
    for name, kv in fx.kv.items():
        try:
            values = dotenv_values(out / f"{name}.env", interpolate=False)
        except OSError:
            return False
        if not values.get("DB_PASSWORD") or any(values.get(k) != val for k, val in kv.items()):
            return False
    return True


def verify(out: Path, fx: Fixture, pg: Postgres) -> tuple[int, int, list[str]]:
    """(files exactly right, credentials that log in, problems)."""
    good, logins, problems = 0, 0, []
    for name, kv in fx.kv.items():
        path = out / f"{name}.env"
        try:
            values = dotenv_values(path, interpolate=False)
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror}")
            continue
        expected = set(kv) | {"DB_USERNAME", "DB_PASSWORD"}
        if set(values) != expected or any(values[k] != val for k, val in kv.items()):
            problems.append(f"{name}: keys {sorted(values)} / values differ from KV")
            continue
        good += 1
        if can_login(pg, values["DB_USERNAME"] or "", values["DB_PASSWORD"] or ""):
            logins += 1
        else:
            problems.append(f"{name}: {values['DB_USERNAME']} cannot log in to PostgreSQL")
    return good, logins, problems


def endpoint(path: str) -> str:
    if path.startswith(f"{KV_MOUNT}/data/"):
        return f"{KV_MOUNT}/data/* (KV read)"
    if path.startswith(f"{KV_MOUNT}/metadata/"):
        return f"{KV_MOUNT}/metadata/*"
    if path.startswith(f"{DB_MOUNT}/creds/"):
        return f"{DB_MOUNT}/creds/* (new credentials)"
    if path.startswith("sys/internal/ui/mounts/"):
        return "sys/internal/ui/mounts/* (mount lookup)"
    if path.startswith("sys/mounts/"):
        return "sys/mounts/* (mount lookup)"
    return path


def audit_response_entries(log: Path, start: int, end: int) -> Iterator[dict[str, Any]]:
    """The response entries between two byte offsets of the audit log."""
    with open(log, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    for line in data.splitlines():
        entry = json.loads(line)
        if entry.get("type") == "response":
            yield entry


def audit_responses(log: Path, start: int, end: int) -> tuple[Counter[str], Counter[str]]:
    """Response entries between two byte offsets of the audit log: by endpoint, and errors."""
    by_path: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for entry in audit_response_entries(log, start, end):
        ep = endpoint(entry["request"]["path"])
        by_path[ep] += 1
        if entry.get("error"):
            errors[f"{ep}: {entry['error'][:80]}"] += 1
    return by_path, errors


def audit_size(log: Path) -> int:
    """Bytes of complete lines so far."""
    with open(log, "rb") as f:
        data = f.read()
    return data.rfind(b"\n") + 1


def vaultsync_request_counter(port: int) -> float | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return None
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vaultsync_vault_requests_total{"))


@dataclass
class Result:
    name: str
    rss_peak: float = 0.0  # MiB
    rss_mean: float = 0.0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    procs: int = 1
    requests: int = 0
    handled: int = 0  # telemetry
    own_count: float | None = None
    ready_after: float | None = None
    files_ok: int = 0
    logins_ok: int = 0
    server_cpu: float = 0.0
    breakdown: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    distinct_users: int = 0

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


def run_contender(which: str, procs: Processes, base: Path, pg: Postgres, binary: str, args: argparse.Namespace) -> Result:
    names = [f"svc{i:02d}" if args.services <= 100 else f"svc{i:04d}" for i in range(args.services)]
    workdir = base / which
    for d in (workdir, workdir / "out", workdir / "templates", workdir / "home"):
        d.mkdir(mode=0o700)
    print(f"[{which}] fresh Vault dev server, {len(names)} services ...", flush=True)
    v = start_vault(procs, workdir, binary)
    try:
        fx = setup_vault(v, pg, workdir, args, names)
        res = Result(which)
        env = clean_env(workdir / "home")
        metrics_port = free_port()
        if which == "vaultsync":
            cfg = vaultsync_config(workdir, v, fx, args, names, metrics_port)
            argv = [sys.executable, "-m", "vaultsync", "--config", str(cfg), "daemon"]
        else:
            cfg = agent_config(workdir, v, fx, args, names)
            argv = [binary, "agent", f"-config={cfg}"]
        time.sleep(0.5)  # let the setup's audit entries land
        handled0, audit0 = v.handled_requests(), audit_size(v.audit_log)
        server_cpu0 = sum(cpu_seconds([v.proc.pid]))
        print(f"[{which}] running {' '.join(Path(a).name if i == 0 else a for i, a in enumerate(argv[:4]))} ... "
              f"for {args.seconds:.0f} s", flush=True)
        t0 = time.monotonic()
        proc = procs.spawn(which, argv, log=workdir / f"{which}.log", env=env, cwd=workdir)
        sampler = Sampler(proc.pid)
        sampler.start()
        deadline = t0 + args.seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sampler.finish()
                raise BenchError(f"{which} exited with {proc.returncode}:\n{tail(workdir / f'{which}.log')}")
            if res.ready_after is None and all_rendered(workdir / "out", fx):
                res.ready_after = time.monotonic() - t0
            time.sleep(min(0.25 if res.ready_after is None else 1.0, max(0.0, deadline - time.monotonic())))
        sampler.finish()
        audit1 = audit_size(v.audit_log)
        res.handled = v.handled_requests() - handled0
        res.server_cpu = sum(cpu_seconds([v.proc.pid])) - server_cpu0
        if which == "vaultsync":
            res.own_count = vaultsync_request_counter(metrics_port)
        res.cpu_user, res.cpu_sys = sampler.cpu
        res.procs = sampler.nprocs
        res.rss_peak = max(sampler.rss) / 1024 if sampler.rss else 0.0
        res.rss_mean = statistics.fmean(sampler.rss) / 1024 if sampler.rss else 0.0
        res.breakdown, res.errors = audit_responses(v.audit_log, audit0, audit1)
        res.requests = sum(res.breakdown.values())
        res.files_ok, res.logins_ok, res.problems = verify(workdir / "out", fx, pg)
        print(f"[{which}] stopping; files ok {res.files_ok}/{len(names)}, PostgreSQL logins ok {res.logins_ok}", flush=True)
        rc = procs.stop(proc)
        if rc not in (0, -signal.SIGTERM):
            res.problems.append(f"{which} exited with {rc} on SIGTERM")
        if res.problems:
            print(f"[{which}] log tail:\n{tail(workdir / f'{which}.log', 15)}", flush=True)
        return res
    finally:
        procs.stop(v.proc)


# --- report ------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}"


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    print()
    print(f"{args.services} services, {args.seconds:.0f} s each, poll/static_secret_render_interval {args.poll}, "
          f"lease ttl {args.lease_ttl} / max {args.lease_max_ttl}, auth {args.auth} (token ttl {args.token_ttl}), "
          f"{os.cpu_count()} CPUs")
    a, b = results.get("vaultsync"), results.get("agent")
    cols = [r for r in (a, b) if r]
    rows: list[tuple[str, list[str], str]] = [
        ("peak RSS (MiB, process tree)", [f"{r.rss_peak:.1f}" for r in cols], ratio(a and a.rss_peak, b and b.rss_peak)),
        ("mean RSS (MiB)", [f"{r.rss_mean:.1f}" for r in cols], ratio(a and a.rss_mean, b and b.rss_mean)),
        ("CPU seconds (user+sys)", [f"{r.cpu:.2f}" for r in cols], ratio(a and a.cpu, b and b.cpu)),
        ("  user / sys", [f"{r.cpu_user:.2f} / {r.cpu_sys:.2f}" for r in cols], ""),
        ("requests to Vault (audit log)", [str(r.requests) for r in cols], ratio(a and a.requests, b and b.requests)),
        ("  server telemetry handle_request", [str(r.handled) for r in cols], ratio(a and a.handled, b and b.handled)),
        ("  client's own count", [("-" if r.own_count is None else f"{r.own_count:.0f}") for r in cols], ""),
        ("Vault server CPU seconds", [f"{r.server_cpu:.2f}" for r in cols], ratio(a and a.server_cpu, b and b.server_cpu)),
        ("all files rendered after (s)", [("never" if r.ready_after is None else f"{r.ready_after:.2f}") for r in cols],
         ratio(a and a.ready_after, b and b.ready_after)),
        ("files correct at the end", [f"{r.files_ok}/{args.services}" for r in cols], ""),
        ("credentials that log in to PG", [f"{r.logins_ok}/{args.services}" for r in cols], ""),
        ("processes in tree (max)", [str(r.procs) for r in cols], ""),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    head = "".join(f"{r.name:>16}" for r in cols) + (f"{'vaultsync/agent':>18}" if a and b else "")
    print(f"{'':<{w0}}{head}")
    for label, values, rt in rows:
        print(f"{label:<{w0}}" + "".join(f"{val:>16}" for val in values) + (f"{rt:>18}" if a and b else ""))
    print()
    print("requests: response entries in each contender's own fresh server's file audit log, from its launch to the end")
    print("of the window (setup excluded); the telemetry counter vault_core_handle_request_count does not count the")
    print("sys/internal/ui/mounts lookups. CPU and RSS: the contender's process tree only (not Vault, not PostgreSQL).")
    print()
    print("requests by endpoint (audit log responses):")
    eps = sorted(set().union(*(r.breakdown for r in cols)), key=lambda e: -sum(r.breakdown[e] for r in cols))
    w1 = max([len(e) for e in eps] + [10]) + 2
    print(f"  {'':<{w1}}" + "".join(f"{r.name:>12}" for r in cols))
    for ep in eps:
        print(f"  {ep:<{w1}}" + "".join(f"{r.breakdown[ep]:>12}" for r in cols))
    for r in cols:
        if r.errors:
            print(f"error responses ({r.name}):")
            for e, n in r.errors.most_common():
                print(f"  {n:>5}  {e}")
        if r.problems:
            print(f"problems ({r.name}):")
            for p in r.problems[:20]:
                print(f"  {p}")


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--poll", default="10s", help="vaultsync poll_interval = agent static_secret_render_interval")
    ap.add_argument("--lease-ttl", default="30s", help="database role default_ttl")
    ap.add_argument("--lease-max-ttl", default="120s", help="database role max_ttl")
    ap.add_argument("--auth", choices=["token", "approle"], default="token",
                    help="token: a renewable token in a file (agent: token_file); approle: role_id/secret_id files")
    ap.add_argument("--token-ttl", default="60s", help="TTL of the token (or of AppRole tokens)")
    ap.add_argument("--token-max-ttl", default="1h", help="AppRole token_max_ttl")
    ap.add_argument("--only", choices=["vaultsync", "agent"], help="run one contender only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs, audit logs)")
    args = ap.parse_args()
    for opt in ("poll", "lease_ttl", "lease_max_ttl", "token_ttl", "token_max_ttl"):
        parse_duration(getattr(args, opt))  # fail early on a bad duration

    binary = devserver.find_server_binary()

    def bench(procs: Processes, base: Path) -> int:
        results: dict[str, Result] = {}
        print(f"server binary: {binary}", flush=True)
        pg = start_postgres(procs, base)
        with pg.connect() as conn:
            print(f"PostgreSQL: {conn.execute('select version()').fetchone()[0].split(',')[0]} on 127.0.0.1:{pg.port}",
                  flush=True)
        for which in ("vaultsync", "agent"):
            if args.only in (None, which):
                results[which] = run_contender(which, procs, base, pg, binary, args)
        report(results, args)
        failed = any(r.problems or r.files_ok != args.services or r.logins_ok != args.services for r in results.values())
        return 1 if failed else 0

    return run_bench("vaultsync-bench-daemon-", bench, keep=args.keep)


def run_bench(prefix: str, body: Callable[[Processes, Path], int], *, keep: bool) -> int:
    """``body(procs, base)`` with a fresh temporary folder: Ctrl-C, SIGTERM and SIGHUP stop every
    process it started, and the folder goes unless ``keep``."""
    procs = Processes()
    base = Path(tempfile.mkdtemp(prefix=prefix))

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return body(procs, base)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        procs.stop_all()
        if keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
