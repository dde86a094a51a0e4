"""`vaultsync dev up/down`: a real dev server in the background, its token never on a command line."""

from __future__ import annotations

import os
from pathlib import Path

import hvac

from tests.conftest import run_cli
from vaultsync import devserver
from tests.fixtures_servers import free_port


def test_dev_up_prints_exports_reuses_the_running_server_and_down_stops_it(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    # A cache folder of its own (for the state file); the server binary is the one the suite uses.
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), VAULTSYNC_SERVER_BIN=devserver.find_server_binary())
    port = free_port()
    up = run_cli("dev", "up", "--port", str(port), env=env)
    try:
        assert up.code == 0, up.output
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports["VAULT_ADDR"] == f"http://127.0.0.1:{port}"
        client = hvac.Client(url=exports["VAULT_ADDR"], token=exports["VAULT_TOKEN"])
        assert client.is_authenticated() and "secret/" in client.sys.list_mounted_secrets_engines()["data"]
        state = tmp_path / "cache" / "vaultsync" / "dev"
        assert (state / f"server-{port}.json").stat().st_mode & 0o777 == 0o600
        logs = list(state.glob("server-*.log"))
        assert logs and all(p.stat().st_mode & 0o777 == 0o600 for p in logs)
        pid = __import__("json").loads((state / f"server-{port}.json").read_text())["pid"]
        assert exports["VAULT_TOKEN"] not in Path(f"/proc/{pid}/cmdline").read_text()
        again = run_cli("dev", "up", env=env)
        assert again.stdout == up.stdout  # the same server, not a second one
    finally:
        down = run_cli("dev", "down", env=env)
    assert down.code == 0 and down.stdout.strip() == f"stopped http://127.0.0.1:{port}"
    assert run_cli("dev", "down", env=env).stdout.strip() == "no dev server was running"


def test_dev_up_tightens_permissive_modes_of_existing_state_and_log_files(tmp_path: Path):
    """The log and the state file hold the root token: modes left wide by an older run or a
    careless copy are reset, not kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), VAULTSYNC_SERVER_BIN=devserver.find_server_binary())
    state = tmp_path / "cache" / "vaultsync" / "dev"
    state.mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    port = free_port()
    log = state / f"server-{port}.log"
    log.write_text("old log\n")
    log.chmod(0o644)
    (state / f"server-{port}.json").write_text("{}")
    (state / f"server-{port}.json").chmod(0o644)
    up = run_cli("dev", "up", "--port", str(port), env=env)
    try:
        assert up.code == 0, up.output
        assert state.stat().st_mode & 0o777 == 0o700
        assert log.stat().st_mode & 0o777 == 0o600
        assert (state / f"server-{port}.json").stat().st_mode & 0o777 == 0o600
    finally:
        run_cli("dev", "down", env=env)


def _dev_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), VAULTSYNC_SERVER_BIN=devserver.find_server_binary())
    return env


def test_one_dev_server_per_port_status_lists_them_and_down_port_stops_only_that_one(tmp_path: Path):
    env = _dev_env(tmp_path)
    first, second = free_port(), free_port()
    try:
        a = run_cli("dev", "up", "--port", str(first), env=env)
        b = run_cli("dev", "up", "--port", str(second), env=env)
        assert a.code == 0 and b.code == 0, a.output + b.output
        assert f"VAULT_ADDR=http://127.0.0.1:{second}" in b.stdout  # not the one already running on `first`
        status = run_cli("dev", "status", env=env)
        assert status.code == 0 and f"127.0.0.1:{first}" in status.stdout and f"127.0.0.1:{second}" in status.stdout
        down = run_cli("dev", "down", "--port", str(first), env=env)
        assert down.stdout.strip() == f"stopped http://127.0.0.1:{first}"
        after = run_cli("dev", "status", env=env)
        assert f"127.0.0.1:{first}" not in after.stdout and f"127.0.0.1:{second}" in after.stdout
    finally:
        run_cli("dev", "down", env=env)
    assert run_cli("dev", "status", env=env).code == 1


def test_dev_up_on_a_port_someone_else_uses_is_a_clear_error(tmp_path: Path):
    import socket

    env = _dev_env(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("dev", "up", "--port", str(port), env=env)
    assert res.code == 1 and f"127.0.0.1:{port} is already in use" in res.stderr, res.output


def test_dev_down_never_signals_a_process_the_state_file_names_that_is_not_our_server(tmp_path: Path):
    import json
    import subprocess

    env = _dev_env(tmp_path)
    state = tmp_path / "cache" / "vaultsync" / "dev"
    state.mkdir(parents=True, mode=0o700)
    port = free_port()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (state / f"server-{port}.json").write_text(json.dumps(
            {"addr": f"http://127.0.0.1:{port}", "token": "x", "pid": bystander.pid, "log": "/dev/null"}))
        res = run_cli("dev", "down", env=env)
        assert res.code == 0 and res.stdout.strip() == "no dev server was running"
        assert bystander.poll() is None, "dev down killed a process that is not a dev server"
    finally:
        bystander.kill()
        bystander.wait()
