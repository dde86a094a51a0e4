"""`vaultsync exec` and `[services.<name>.exec]`: a real server, real child processes (and a real
PostgreSQL for the lease re-issue)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.test_daemon import can_login, config, database_engine, role_exists, short_token

#: The child: records each start (pid, chosen variables, argv, whether credentials leaked in) as a
#: JSON line, records the signals it gets, exits with EXIT_ON_TERM on SIGTERM.
CHILD = r'''
import json, os, signal, sys, time
record = sys.argv[1]
def put(**kw):
    with open(record, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **kw}) + "\n")
def on_signal(signum, _frame):
    put(signal=signal.Signals(signum).name)
    if signum == signal.SIGTERM:
        sys.exit(int(os.environ.get("EXIT_ON_TERM", "0")))
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, on_signal)
put(start=True, env={k: v for k, v in os.environ.items() if k in ("COLOR", "DB_USERNAME", "DB_PASSWORD", "PATH", "KEEP_ME")},
    leaked=sorted(k for k in os.environ if "TOKEN" in k or "SECRET_ID" in k), argv=sys.argv,
    file=open(sys.argv[2]).read() if len(sys.argv) > 2 and os.path.exists(sys.argv[2]) else None)
exit_now = os.environ.get("EXIT_NOW")
if exit_now is not None:
    sys.exit(int(exit_now))
while True:
    time.sleep(0.2)
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    (d / "child.py").write_text(CHILD)
    return d


def records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def starts(path: Path) -> list[dict]:
    return [r for r in records(path) if r.get("start")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def start_exec(workdir: Path, cfg: Path, env: dict[str, str], *cmd: str, service: str = "web") -> subprocess.Popen[bytes]:
    out = open(workdir / "exec.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "vaultsync", "exec", service, "--config", str(cfg), "--", *cmd],
                                env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def child_cmd(workdir: Path, *more: str) -> list[str]:
    return [sys.executable, str(workdir / "child.py"), str(workdir / "record.jsonl"), *more]


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("vaultsync exec did not stop") from None


def test_exec_runs_the_command_with_the_secrets_and_exits_with_its_status(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n')
    env = {**daemon_env(vault_server, short_token(root), workdir), "EXIT_NOW": "7", "KEEP_ME": "yes"}
    proc = start_exec(workdir, cfg, env, *child_cmd(workdir))
    assert proc.wait(60) == 7, (workdir / "exec.log").read_text()
    (run,) = starts(workdir / "record.jsonl")
    assert run["env"]["COLOR"] == "blue" and run["env"]["KEEP_ME"] == "yes"
    assert run["leaked"] == []  # no VAULT_TOKEN (nor any token or secret id) in the child's environment
    assert "blue" not in " ".join(run["argv"])
    assert "blue" not in (workdir / "exec.log").read_text()


def test_exec_env_clear_gives_only_the_secrets(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "red", "EXIT_NOW": "0"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n[services.web.exec]\nenv_clear = true\n')
    proc = start_exec(workdir, cfg, {**daemon_env(vault_server, short_token(root), workdir), "KEEP_ME": "yes"},
                      *child_cmd(workdir))
    assert proc.wait(60) == 0, (workdir / "exec.log").read_text()
    (run,) = starts(workdir / "record.jsonl")
    assert run["env"] == {"COLOR": "red"}


def test_exec_restarts_the_child_within_one_poll_with_the_new_value(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n[services.web.exec]\nkill_timeout = "5s"\n', poll="2s")
    proc = start_exec(workdir, cfg, daemon_env(vault_server, short_token(root), workdir), *child_cmd(workdir))
    try:
        record = workdir / "record.jsonl"
        first = wait_for(lambda: starts(record), 30, "the child started")[0]
        assert first["env"]["COLOR"] == "blue"
        root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "green"}, mount_point=kv2)
        changed = time.monotonic()
        second = wait_for(lambda: len(s := starts(record)) == 2 and s[1], 15, "the child restarted")
        assert time.monotonic() - changed < 2 + 3  # one poll (2 s), plus stopping and starting
        assert second["env"]["COLOR"] == "green" and second["pid"] != first["pid"]
        assert {"pid": first["pid"], "signal": "SIGTERM"} in records(record)  # stopped with the kill signal
        assert not alive(first["pid"])
    finally:
        code = stop(proc)
    assert code == 0  # SIGTERM forwarded; the child exits 0 on it, and so do we


def test_sigterm_is_forwarded_and_the_childs_status_returned(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n')
    env = {**daemon_env(vault_server, short_token(root), workdir), "EXIT_ON_TERM": "3"}
    proc = start_exec(workdir, cfg, env, *child_cmd(workdir))
    record = workdir / "record.jsonl"
    try:
        child = wait_for(lambda: starts(record), 30, "the child started")[0]["pid"]
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: {"pid": child, "signal": "SIGUSR1"} in records(record), 10, "SIGUSR1 forwarded")
        assert proc.poll() is None and alive(child)
    finally:
        code = stop(proc)
    assert code == 3
    assert {"pid": child, "signal": "SIGTERM"} in records(record)
    assert not alive(child)


def test_no_orphan_after_sigkill_of_vaultsync(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    cfg = config(workdir, kv2, '[services.web]\n')
    proc = start_exec(workdir, cfg, daemon_env(vault_server, short_token(root), workdir), *child_cmd(workdir))
    child = wait_for(lambda: starts(workdir / "record.jsonl"), 30, "the child started")[0]["pid"]
    assert os.getpgid(child) == child  # its own process group
    proc.kill()
    proc.wait()
    wait_for(lambda: not alive(child), 10, "the child killed with its parent")


def test_the_child_waits_until_every_source_has_a_value(kv2, root, vault_server, workdir):
    cfg = config(workdir, kv2, '[services.web]\n', poll="1s")
    proc = start_exec(workdir, cfg, daemon_env(vault_server, short_token(root), workdir), *child_cmd(workdir))
    record = workdir / "record.jsonl"
    try:
        wait_for(lambda: "kv secret missing" in (workdir / "exec.log").read_text(), 30, "the secret reported missing")
        time.sleep(1.5)  # (a poll or two: the child must still not be started)
        assert starts(record) == []
        root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "late"}, mount_point=kv2)
        run = wait_for(lambda: starts(record), 15, "the child started once the secret exists")[0]
        assert run["env"]["COLOR"] == "late"
    finally:
        stop(proc)


def test_daemon_signal_mode_signals_the_child_after_the_file_is_rendered(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    env_file = workdir / "web.env"
    cfg = config(workdir, kv2, f"""
[services.web]
[[services.web.destinations]]
path = "web.env"
[services.web.exec]
command = {json.dumps(child_cmd(workdir, str(env_file)))}
on_change = "signal"
signal = "USR1"
""", poll="1s")
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start()
    record = workdir / "record.jsonl"
    try:
        first = wait_for(lambda: starts(record), 30, "the child started")[0]
        assert "blue" in first["file"]  # the file was rendered before the child started
        root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "green"}, mount_point=kv2)
        wait_for(lambda: {"pid": first["pid"], "signal": "SIGUSR1"} in records(record), 15, "the child signalled")
        assert dotenv_values(env_file)["COLOR"] == "green"
        assert len(starts(record)) == 1 and alive(first["pid"])  # signalled, not restarted
        assert d.status()["services"]["web"]["destinations"]["exec"]["result"] == "success"
    finally:
        assert d.stop() == 0
    assert not alive(first["pid"])  # the daemon's SIGTERM stops its children


def test_daemon_backs_off_a_crash_looping_child(kv2, root, vault_server, workdir):
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"COLOR": "blue"}, mount_point=kv2)
    crash = [sys.executable, "-c", f"open({str(workdir / 'crash.log')!r}, 'a').write('x\\n'); raise SystemExit(1)"]
    cfg = config(workdir, kv2, f'[services.web]\n[services.web.exec]\ncommand = {json.dumps(crash)}\n')
    d = DaemonProc(cfg, daemon_env(vault_server, short_token(root), workdir), workdir).start(wait_ready=False)
    try:
        count = lambda: len((workdir / "crash.log").read_text().splitlines()) if (workdir / "crash.log").exists() else 0  # noqa: E731
        wait_for(lambda: count() >= 3, 20, "the child restarted after crashes")
        t0, n0 = time.monotonic(), count()
        time.sleep(6)
        # Backoff 1, 2, 4, 8 s (jittered): a tight loop would start it hundreds of times.
        assert count() - n0 <= 3, f"{count() - n0} starts in {time.monotonic() - t0:.1f}s"
        assert d.count("child exited") >= 3
    finally:
        assert d.stop() == 0


def test_lease_reissue_at_max_ttl_restarts_the_child_with_working_credentials(kv2, root, vault_server, postgres_server, workdir):
    db = database_engine(root, postgres_server, default_ttl="5s", max_ttl="20s")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"APP": "x"}, mount_point=kv2)
    cfg = config(workdir, kv2, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[services.api.exec]\nkill_timeout = "5s"\n',
                 grace="1s")
    proc = start_exec(workdir, cfg, daemon_env(vault_server, short_token(root), workdir), *child_cmd(workdir), service="api")
    record = workdir / "record.jsonl"
    try:
        first = wait_for(lambda: starts(record), 30, "the child started")[0]["env"]
        assert can_login(postgres_server, first["DB_USERNAME"], first["DB_PASSWORD"])
        second = wait_for(lambda: len(s := starts(record)) >= 2 and s[1]["env"], 40, "the child restarted with new credentials")
        assert second["DB_USERNAME"] != first["DB_USERNAME"]
        assert can_login(postgres_server, second["DB_USERNAME"], second["DB_PASSWORD"])
        wait_for(lambda: not role_exists(postgres_server, first["DB_USERNAME"]), 15, "the old lease revoked")
    finally:
        stop(proc)
    assert second["DB_PASSWORD"] not in (workdir / "exec.log").read_text()


# --- pure: settings and the child's environment (no server) ----------------------------------


@pytest.mark.parametrize("body, error", [
    ('command = []', "exec.command must not be empty"),
    ('command = ["x"]\non_change = "reload"', 'on_change must be "restart" or "signal"'),
    ('command = ["x"]\nsignal = "USR9"', "exec.signal 'USR9' is not a signal name"),
    ('command = ["x"]\nkill_timeout = "0s"', "exec.kill_timeout must be more than 0"),
    ('command = "x y"', "exec.command must be a list of strings"),
    ('command = ["x"]\nrestart = true', "unknown setting services.web.exec.restart"),
])
def test_exec_settings_errors_name_the_key(tmp_path, body, error):
    from vaultsync import config as cfgmod
    from vaultsync.errors import ConfigError

    path = tmp_path / "vaultsync.toml"
    path.write_text(f"[services.web]\n[services.web.exec]\n{body}\n")
    with pytest.raises(ConfigError) as exc:
        cfgmod.load(path, env={})
    assert error in str(exc.value) and str(path) in str(exc.value)


def test_exec_settings_defaults_and_wait(tmp_path):
    from vaultsync import config as cfgmod

    path = tmp_path / "vaultsync.toml"
    path.write_text('[services.web]\n[services.web.exec]\ncommand = ["srv", "-v"]\nwait = { min = "2s", max = "5s" }\n')
    ex = cfgmod.load(path, env={}).services["web"].exec
    assert ex.command == ("srv", "-v") and ex.on_change == "restart" and ex.restart_on_exit and not ex.env_clear
    assert (ex.wait_min, ex.wait_max, ex.kill_signal, ex.kill_timeout) == (2.0, 5.0, "TERM", 30.0)


def test_child_environment_drops_credentials_and_secrets_win():
    from vaultsync.child import child_environment

    base = {"PATH": "/bin", "VAULT_TOKEN": "t", "BAO_TOKEN": "t", "VAULT_ADDR": "https://v", "VAULT_SECRET_ID": "s",
            "VAULT_ROLE_ID": "r", "COLOR": "old"}
    env = child_environment({"COLOR": "new", "DB_PASSWORD": "p"}, clear=False, base=base)
    assert env == {"PATH": "/bin", "VAULT_ADDR": "https://v", "COLOR": "new", "DB_PASSWORD": "p"}
    assert child_environment({"A": "1"}, clear=True, base=base) == {"A": "1"}


def test_exec_without_a_command_is_a_clear_error(tmp_path):
    from vaultsync import config as cfgmod
    from vaultsync.errors import ConfigError
    from vaultsync.execrun import exec_settings

    path = tmp_path / "vaultsync.toml"
    path.write_text("[services.web]\n")
    s = cfgmod.load(path, env={})
    with pytest.raises(ConfigError, match="no command"):
        exec_settings(s, "web", (), metrics_addr=None)
    with pytest.raises(ConfigError, match=r"no \[services.api\]"):
        exec_settings(s, "api", ("x",), metrics_addr=None)
    narrowed = exec_settings(s, "web", ("x",), metrics_addr=None)
    assert narrowed.services["web"].exec.command == ("x",) and not narrowed.services["web"].exec.restart_on_exit
    assert narrowed.daemon.metrics_addr == ""
