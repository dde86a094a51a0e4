"""`vaultsync migrate` against the real server: round trips, idempotence, conflicts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import hvac
import pytest
from click.testing import CliRunner
from dotenv import dotenv_values

from tests.conftest import run_cli
from tests.envcorpus import CORPUS
from tests.least_privilege import migrator_token
from vaultsync import cli as cli_module
from vaultsync import migrate as m
from vaultsync.config import SourceSpec
from vaultsync.vault import KV

CANARY = "canary-Q7w-migrate-secret"


def read(root: hvac.Client, mount: str, version: int, path: str) -> dict | None:
    try:
        if version == 2:
            return root.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
        return root.secrets.kv.v1.read_secret(path=path, mount_point=mount)["data"]
    except hvac.exceptions.InvalidPath:
        return None


def kv2_version(root: hvac.Client, mount: str, path: str) -> int:
    return root.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"]["current_version"]


def write_env(tmp_path: Path, service: str, data: bytes) -> Path:
    path = tmp_path / service / ".env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def cli(request, vault_env, root):
    """`vaultsync` as an operator runs migrate: with a token from the shipped migrator policy (no
    default policy) for this test's mount and the default prefix; root only arranges and inspects."""
    mount, version = None, 2
    for name in ("kv2", "kv_any", "kv1"):
        if name in request.fixturenames:
            value = request.getfixturevalue(name)
            mount, version = value if isinstance(value, tuple) else (value, 1 if name == "kv1" else 2)
    token = migrator_token(root, mount, version) if mount else vault_env["VAULT_TOKEN"]

    def run(*args: str, env: dict[str, str] | None = None, cwd=None):
        return run_cli(*args, env={**vault_env, "VAULT_TOKEN": token, **(env or {})}, cwd=cwd)

    return run


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_round_trip_equals_python_dotenv(name, kv_any, root, cli, tmp_path):
    mount, version = kv_any
    path = write_env(tmp_path, "web", CORPUS[name])
    res = cli("migrate", "--mount", mount, str(path))
    assert res.code == 0, res.output
    assert read(root, mount, version, "compose/web") == dotenv_values(path, interpolate=False)


def test_second_run_makes_zero_writes(kv2, root, cli, tmp_path):
    path = write_env(tmp_path, "api", CORPUS["plain"] + CORPUS["pem"])
    first = cli("migrate", "--mount", kv2, "--output", "json", str(path))
    assert first.code == 0, first.output
    assert json.loads(first.stdout)["result"]["written"] == ["compose/api"]
    assert kv2_version(root, kv2, "compose/api") == 1
    second = cli("migrate", "--mount", kv2, "--output", "json", str(path))
    assert second.code == 0, second.output
    doc = json.loads(second.stdout)
    assert doc["plan"]["writes"] == 0 and doc["result"] is None
    assert {k["status"] for k in doc["plan"]["secrets"][0]["keys"]} == {"unchanged"}
    assert kv2_version(root, kv2, "compose/api") == 1


def test_plan_is_masked_and_dry_run_writes_nothing(kv2, root, cli, tmp_path):
    path = write_env(tmp_path, "api", f"PASSWORD={CANARY}\nHOST=db\n".encode())
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"HOST": "old", "LEGACY": "x"}, mount_point=kv2)
    res = cli("migrate", "--mount", kv2, "--dry-run", str(path))
    assert res.code == 0, res.output
    assert CANARY not in res.output
    assert "+ PASSWORD" in res.stdout and "~ HOST" in res.stdout and "? LEGACY" in res.stdout
    assert kv2_version(root, kv2, "compose/api") == 1


def test_merge_keeps_keys_only_in_vault_unless_prune(kv2, root, cli, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"LEGACY": "keep", "A": "old"}, mount_point=kv2)
    path = write_env(tmp_path, "api", b"A=new\n")
    assert cli("migrate", "--mount", kv2, str(path)).code == 0
    assert read(root, kv2, 2, "compose/api") == {"LEGACY": "keep", "A": "new"}
    assert cli("migrate", "--mount", kv2, "--prune", str(path)).code == 0
    assert read(root, kv2, 2, "compose/api") == {"A": "new"}


def test_concurrent_writer_is_detected_and_its_data_kept(kv_any, root, vault_server, tmp_path):
    mount, version = kv_any
    kv = KV(vault_server.client(vault_server.token), mount, version)
    path = write_env(tmp_path, "api", b"A=mine\n")
    targets = m.build_targets([SourceSpec(str(path))], prefix="compose")
    the_plan = m.plan(kv, targets)
    theirs = {"A": "theirs", "B": "also theirs"}
    kv.write("compose/api", theirs)  # someone else writes between plan and apply
    outcome = m.apply(kv, the_plan)
    assert outcome.conflicts == ["compose/api"] and outcome.written == []
    assert outcome.exit_code == 3
    assert read(root, mount, version, "compose/api") == theirs


def test_cli_exits_3_on_conflict_and_says_what_was_written(kv2, root, vault_server, tmp_path, monkeypatch):
    """Inject a real concurrent writer between the CLI's plan and apply (the server stays real)."""
    api = write_env(tmp_path, "api", b"A=mine\n")
    web = write_env(tmp_path, "web", b"W=mine\n")
    real_plan = m.plan

    def plan_then_someone_writes(*args, **kwargs):
        result = real_plan(*args, **kwargs)
        root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "theirs"}, mount_point=kv2)
        return result

    monkeypatch.setattr(m, "plan", plan_then_someone_writes)
    for name, value in vault_server.env(tmp_path, vault_server.token).items():
        if name.startswith("VAULT_"):
            monkeypatch.setenv(name, value)
    res = CliRunner().invoke(cli_module.main, ["migrate", "--mount", kv2, str(api), str(web)])
    assert res.exit_code == 3, res.output
    assert "conflict: " + kv2 + "/compose/api" in res.output
    assert "1 secrets were NOT written" in res.output
    assert read(root, kv2, 2, "compose/api") == {"A": "theirs"}
    assert read(root, kv2, 2, "compose/web") == {"W": "mine"}


@pytest.mark.parametrize(
    "content,line",
    [
        (f'OK=1\nPASSWORD="{CANARY}\n', 2),
        (f"A=1\n{CANARY}\n", 2),
        (f"A=1\nB={CANARY}\x00\n", 2),
    ],
    ids=["unterminated-quote", "bare-word", "nul"],
)
def test_bad_input_exits_2_and_never_shows_the_value(content, line, kv2, root, cli, tmp_path):
    good = write_env(tmp_path, "good", b"G=1\n")
    bad = write_env(tmp_path, "bad", content.encode())
    res = cli("migrate", "--mount", kv2, str(good), str(bad))
    assert res.code == 2, res.output
    assert f"{bad}:{line}:" in res.stderr
    assert CANARY not in res.output
    assert read(root, kv2, 2, "compose/good") is None  # nothing written, not even the good file


def test_invalid_utf8_exits_2(kv2, cli, tmp_path):
    bad = write_env(tmp_path, "bad", b"A=\xff" + CANARY.encode() + b"\n")
    res = cli("migrate", "--mount", kv2, str(bad))
    assert res.code == 2 and f"{bad}:1: invalid UTF-8" in res.stderr and CANARY not in res.output


def test_permission_denied_is_clear_and_exit_1(kv2, root, cli, tmp_path):
    root.sys.create_or_update_policy("read-only-" + kv2, f'path "{kv2}/data/*" {{ capabilities = ["read"] }}')
    token = root.auth.token.create(policies=["read-only-" + kv2], ttl="5m")["auth"]["client_token"]
    path = write_env(tmp_path, "api", f"PASSWORD={CANARY}\n".encode())
    res = cli("migrate", "--mount", kv2, "--kv-version", "2", str(path), env={"VAULT_TOKEN": token})
    assert res.code == 1, res.output
    assert f"failed: {kv2}/compose/api: permission denied" in res.stderr
    assert CANARY not in res.output and token not in res.output


def test_unknown_kv_version_without_access_asks_for_the_flag(kv2, root, cli, tmp_path):
    token = root.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    path = write_env(tmp_path, "api", b"A=1\n")
    res = cli("migrate", "--mount", kv2, str(path), env={"VAULT_TOKEN": token})
    assert res.code == 2 and "--kv-version" in res.stderr


def test_config_maps_files_and_splits_by_prefix(kv2, root, cli, tmp_path):
    write_env(tmp_path, "api", b"APP_NAME=api\nDB_USER=u\nDB_PASSWORD=p\n")
    (tmp_path / "vaultsync.toml").write_text(
        f'[kv]\nmount = "{kv2}"\nprefix = "prod"\n\n'
        '[[migrate.sources]]\nfile = "api/.env"\nservice = "backend"\nsplit = { "DB_" = "backend-db" }\nstrip_prefix = true\n'
    )
    res = cli("--config", str(tmp_path / "vaultsync.toml"), "migrate", env={"VAULT_TOKEN": migrator_token(root, kv2, prefix="prod")})
    assert res.code == 0, res.output
    assert read(root, kv2, 2, "prod/backend") == {"APP_NAME": "api"}
    assert read(root, kv2, 2, "prod/backend-db") == {"USER": "u", "PASSWORD": "p"}


def test_many_services_concurrently(kv2, root, cli, tmp_path):
    files = [str(write_env(tmp_path, f"svc{i:02d}", f"K{i}=v{i}\nSHARED=s\n".encode())) for i in range(30)]
    res = cli("migrate", "--mount", kv2, "--concurrency", "8", "--output", "json", *files)
    assert res.code == 0, res.output
    assert len(json.loads(res.stdout)["result"]["written"]) == 30
    assert read(root, kv2, 2, "compose/svc17") == {"K17": "v17", "SHARED": "s"}


def test_duplicate_key_warns_and_strict_fails(kv2, root, cli, tmp_path):
    path = write_env(tmp_path, "api", CORPUS["duplicates"])
    res = cli("migrate", "--mount", kv2, str(path))
    assert res.code == 0 and f"{path}:3: duplicate key KEY" in res.stderr
    assert read(root, kv2, 2, "compose/api")["KEY"] == "second"
    strict = cli("migrate", "--mount", kv2, "--strict", "--path", "compose/strict", str(path))
    assert strict.code == 2 and read(root, kv2, 2, "compose/strict") is None


def test_oversized_secret_is_bad_input(kv2, cli, tmp_path):
    path = write_env(tmp_path, "big", ("BLOB=" + "x" * 600_000 + "\n").encode())
    res = cli("migrate", "--mount", kv2, str(path))
    assert res.code == 2 and "over the" in res.stderr


def test_json_logs_carry_no_values(kv2, cli, tmp_path):
    path = write_env(tmp_path, "api", f"PASSWORD={CANARY}\n".encode())
    res = cli("migrate", "--mount", kv2, str(path))
    assert res.code == 0
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert {"migrate planned", "migrate applied"} <= {e["event"] for e in events}
    assert all({"timestamp", "level", "event"} <= set(e) for e in events)
    assert CANARY not in res.output


def test_paths_are_normalized_and_odd_names_reach_the_server_as_written(kv2, root, cli, tmp_path):
    path = write_env(tmp_path, "api", b"A=1\n")
    for _ in range(2):  # a trailing slash must plan the same secret again, not a "new" one
        res = cli("migrate", "--mount", kv2, "--path", "compose//api/", str(path))
        assert res.code == 0, res.output
    assert kv2_version(root, kv2, "compose/api") == 1
    odd = write_env(tmp_path, "a%20b#c", b"B=2\n")
    for _ in range(2):
        res = cli("migrate", "--mount", kv2, "--output", "json", str(odd))
        assert res.code == 0, res.output
    assert json.loads(res.stdout)["plan"]["writes"] == 0
    keys = root.secrets.kv.v2.list_secrets(path="compose", mount_point=kv2)["data"]["keys"]
    assert sorted(keys) == ["a%20b#c", "api"]
    assert read(root, kv2, 2, "compose/api") == {"A": "1"}  # the '#' name did not clobber compose/api
    bad = cli("migrate", "--mount", kv2, "--path", "compose/../x", str(path))
    assert bad.code == 2 and "'..'" in bad.stderr
