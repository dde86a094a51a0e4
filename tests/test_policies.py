"""`vaultsync policies apply` and AppRole credentials: least privilege proven on the real server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from tests.conftest import run_cli
from vaultsync import auth, config, policies
from vaultsync.config import AuthSettings

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, mount: str, approle: str, services: dict[str, str]) -> Path:
    body = [f'[kv]\nmount = "{mount}"\nprefix = "compose"\n', f'[auth]\nmount = "{approle}"\n']
    for name, extra in services.items():
        body.append(f"[services.{name}]\ntoken_ttl = \"10m\"\ntoken_max_ttl = \"1h\"\n{extra}\n")
    path = tmp_path / "vaultsync.toml"
    path.write_text("\n".join(body))
    return path


def login(server, approle: str, role_id: str, secret_id: str) -> hvac.Client:
    client = server.client()
    client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=approle, use_token=True)
    return client


def test_twenty_services_each_read_only_their_own_secret(kv2, root, cli, vault_server, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    names = [f"svc{i:02d}" for i in range(20)]
    for n in names:
        root.secrets.kv.v2.create_or_update_secret(path=f"compose/{n}", secret={"OWNER": n}, mount_point=kv2)
    cfg = write_config(tmp_path, kv2, approle, {n: "" for n in names})
    empty = tmp_path / "no-files"
    empty.mkdir()
    res = cli("--config", str(cfg), "policies", "apply", str(empty))
    assert res.code == 0, res.output
    assert "(mount will be enabled)" in res.stdout and "Applied 21 policies" in res.stdout  # 20 services + the daemon

    clients = {}
    for n in names:
        out = tmp_path / "creds" / n
        res = cli("--config", str(cfg), "approle", "credentials", n, "--out", str(out))
        assert res.code == 0, res.output
        assert (out / "secret_id").stat().st_mode & 0o777 == 0o600
        secret_id = (out / "secret_id").read_text().strip()
        assert secret_id not in res.output
        clients[n] = login(vault_server, approle, (out / "role_id").read_text().strip(), secret_id)

    for n, client in clients.items():
        own = client.secrets.kv.v2.read_secret_version(path=f"compose/{n}", mount_point=kv2, raise_on_deleted_version=True)
        assert own["data"]["data"] == {"OWNER": n}
        for other in names:
            if other != n:
                with pytest.raises(hvac.exceptions.Forbidden):
                    client.secrets.kv.v2.read_secret_version(path=f"compose/{other}", mount_point=kv2, raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.Forbidden):
            client.sys.list_mounted_secrets_engines()
        with pytest.raises(hvac.exceptions.Forbidden):
            client.sys.list_acl_policies()
        token = client.auth.token.lookup_self()["data"]
        assert token["num_uses"] == 0 and token["policies"] == [f"vaultsync-svc-{n}"]  # no default policy


def test_generated_policy_covers_declared_dynamic_secrets(kv2, root, cli, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path, kv2, approle, {"api": 'dynamic = { db = "database/creds/api" }'})
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    text = root.sys.read_acl_policy("vaultsync-svc-api")["data"]["policy"]
    assert f'path "{kv2}/data/compose/api"' in text and f'path "{kv2}/metadata/compose/api"' in text
    assert 'path "database/creds/api"' in text


def test_kv1_generated_policy_reads_the_v1_path(kv1, root, cli, vault_server, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path, kv1, approle, {"web": ""})
    root.secrets.kv.v1.create_or_update_secret(path="compose/web", secret={"A": "1"}, mount_point=kv1)
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    creds = auth.issue_credentials(root, mount=approle, role="web")
    client = login(vault_server, approle, creds.role_id, creds.secret_id)
    assert client.secrets.kv.v1.read_secret(path="compose/web", mount_point=kv1)["data"] == {"A": "1"}


def test_reapply_is_a_noop_and_an_edited_file_is_updated(root, cli, tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    name = "team-" + uuid.uuid4().hex[:8]
    (folder / f"{name}.hcl").write_text('path "secret/data/team/*" {\n  capabilities = ["read"]\n}\n')
    first = cli("policies", "apply", str(folder), "--output", "json")
    assert first.code == 0, first.output
    statuses = {p["name"]: p["status"] for p in json.loads(first.stdout)["plan"]["policies"]}
    assert statuses[name] == "added"

    again = cli("policies", "apply", str(folder), "--output", "json")
    doc = json.loads(again.stdout)
    assert again.code == 0 and doc["result"] is None
    assert {p["name"]: p["status"] for p in doc["plan"]["policies"]}[name] == "unchanged"

    edited = 'path "secret/data/team/*" {\n  capabilities = ["read", "list"]\n}\n'
    (folder / f"{name}.hcl").write_text(edited)
    res = cli("policies", "apply", str(folder))
    assert res.code == 0 and f"~ {name}" in res.stdout
    assert root.sys.read_acl_policy(name)["data"]["policy"] == policies.MARKER + edited


def test_invalid_policy_names_the_file_and_applies_nothing(root, cli, tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    good, bad = "good-" + uuid.uuid4().hex[:8], "bad-" + uuid.uuid4().hex[:8]
    (folder / f"{good}.hcl").write_text('path "secret/data/x" { capabilities = ["read"] }\n')
    (folder / f"{bad}.hcl").write_text('path "secret/data/x" { capabilities = ["read"\n')
    res = cli("policies", "apply", str(folder))
    assert res.code == 2, res.output
    assert f"{folder / (bad + '.hcl')}: the server rejected policy '{bad}'" in res.stderr
    existing = root.sys.list_acl_policies()["data"]["keys"]
    assert good not in existing and bad not in existing
    assert not [p for p in existing if p.startswith("vaultsync-validate-")]


def test_prune_removes_only_what_vaultsync_made(fresh_vault, tmp_path):
    env = fresh_vault.env(tmp_path, fresh_vault.token)
    root = fresh_vault.client(fresh_vault.token)
    folder = tmp_path / "policies"
    folder.mkdir()
    for n in ("alpha", "beta", "gone"):
        (folder / f"{n}.hcl").write_text(f'path "secret/data/{n}" {{ capabilities = ["read"] }}\n')
    root.sys.create_or_update_acl_policy("stray", 'path "secret/data/stray" { capabilities = ["read"] }')  # another team's
    assert run_cli("policies", "apply", str(folder), env=env).code == 0
    (folder / "gone.hcl").unlink()  # vaultsync applied it; its file was removed since
    assert {"stray", "gone"} <= set(root.sys.list_acl_policies()["data"]["keys"])  # kept without --prune
    dry = run_cli("policies", "apply", str(folder), "--prune", "--dry-run", env=env)
    assert dry.code == 0 and "- gone" in dry.stdout and "? stray" in dry.stdout and "--prune-all removes" in dry.stdout
    res = run_cli("policies", "apply", str(folder), "--prune", env=env)
    assert res.code == 0, res.output
    assert sorted(root.sys.list_acl_policies()["data"]["keys"]) == ["alpha", "beta", "default", "root", "stray"]
    res = run_cli("policies", "apply", str(folder), "--prune-all", env=env)
    assert res.code == 0, res.output
    assert sorted(root.sys.list_acl_policies()["data"]["keys"]) == ["alpha", "beta", "default", "root"]


def test_approle_reapply_is_a_noop_and_a_changed_ttl_is_written(kv2, root, cli, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path, kv2, approle, {"api": 'secret_id_num_uses = 5\nbound_cidrs = ["127.0.0.1/32"]'})
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    role = root.adapter.get(f"/v1/auth/{approle}/role/api")["data"]
    assert role["token_num_uses"] == 0 and role["secret_id_num_uses"] == 5 and role["token_ttl"] == 600
    again = cli("--config", str(cfg), "policies", "apply", str(tmp_path), "--output", "json")
    doc = json.loads(again.stdout)
    assert doc["result"] is None
    assert doc["plan"]["roles"] == [{"name": "api", "status": "unchanged", "fields": []}]
    cfg.write_text(cfg.read_text().replace('token_ttl = "10m"', 'token_ttl = "20m"'))
    res = cli("--config", str(cfg), "policies", "apply", str(tmp_path))
    assert res.code == 0 and "~ api  (token_ttl)" in res.stdout
    assert root.adapter.get(f"/v1/auth/{approle}/role/api")["data"]["token_ttl"] == 1200


def test_wrapped_secret_id_unwraps_exactly_once(kv2, root, cli, vault_server, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path, kv2, approle, {"api": ""})
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    out = tmp_path / "creds"
    res = cli("--config", str(cfg), "approle", "credentials", "api", "--out", str(out), "--wrap-ttl", "60s")
    assert res.code == 0 and "wrapped secret_id" in res.stdout
    settings = AuthSettings(method="approle", mount=approle, role_name="api", role_id_file=str(out / "role_id"),
                            secret_id_file=str(out / "secret_id"), secret_id_wrapped=True)
    client = vault_server.client()
    state = auth.login(client, vault_server.settings(), settings)
    assert "vaultsync-svc-api" in state.policies
    assert client.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=kv2, raise_on_deleted_version=True)["data"]["data"] == {"A": "1"}
    with pytest.raises(auth.SecurityError, match="already unwrapped"):
        auth.login(vault_server.client(), vault_server.settings(), settings)


def test_wrapping_token_from_elsewhere_is_refused(root, vault_server):
    foreign = root.adapter.post("/v1/sys/wrapping/wrap", json={"secret_id": "not-from-approle"}, headers={"X-Vault-Wrap-TTL": "60"})
    token = foreign["wrap_info"]["token"]
    with pytest.raises(auth.SecurityError, match="sys/wrapping/wrap"):
        auth.unwrap_secret_id(vault_server.client(), token, mount="approle", role="api")
    # Refused before unwrapping: the token is still valid for its owner.
    assert root.adapter.post("/v1/sys/wrapping/unwrap", json={"token": token})["data"] == {"secret_id": "not-from-approle"}


def test_secret_ids_only_on_stdout_when_asked(kv2, root, cli, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path, kv2, approle, {"api": ""})
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    res = cli("--config", str(cfg), "--log-level", "debug", "approle", "credentials", "api", "--stdout")
    doc = json.loads(res.stdout)
    assert res.code == 0 and doc["secret_id"] and doc["role_id"]
    assert doc["secret_id"] not in res.stderr
    both = cli("--config", str(cfg), "approle", "credentials", "api")
    assert both.code == 2 and "exactly one of" in both.stderr


def test_example_config_loads():
    s = config.load(ROOT / "vaultsync.example.toml", env={})
    assert set(s.services) >= {"api", "worker"}
    api = s.services["api"]
    assert api.dynamic and api.destinations and api.rotate
    assert s.auth.method == "approle" and s.auth.secret_id_wrapped


def test_shipped_migrator_policy_is_exactly_enough_for_migrate(root, cli, vault_server, tmp_path):
    res = cli("policies", "apply", str(ROOT / "policies"))
    assert res.code == 0, res.output
    token = root.auth.token.create(policies=["vaultsync-migrator"], no_default_policy=True, ttl="5m")["auth"]["client_token"]
    service = "mig-" + uuid.uuid4().hex[:8]
    env_file = tmp_path / service / ".env"
    env_file.parent.mkdir()
    env_file.write_text("A=1\nB=2\n")
    first = cli("migrate", str(env_file), env={"VAULT_TOKEN": token})  # mount "secret", version detected
    assert first.code == 0, first.output
    second = cli("migrate", "--output", "json", str(env_file), env={"VAULT_TOKEN": token})
    assert second.code == 0 and json.loads(second.stdout)["plan"]["writes"] == 0
    outside = cli("migrate", "--path", f"elsewhere/{service}", str(env_file), env={"VAULT_TOKEN": token})
    assert outside.code == 1 and "permission denied" in outside.stderr
    client = vault_server.client(token)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.list_acl_policies()


def test_upper_case_policy_file_is_refused_before_anything_is_applied(root, cli, tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "Api-Read.hcl").write_text('path "secret/data/x" { capabilities = ["read"] }\n')
    res = cli("policies", "apply", str(folder))
    assert res.code == 2 and "lower-cases policy names" in res.stderr


def test_daemon_keeps_its_unwrapped_secret_id_across_a_network_failure(fresh_vault, tmp_path):
    """A wrapped secret_id can be unwrapped once: a login that fails for a network reason must
    not throw the unwrapped value away (the file still holds the used wrapping token)."""
    import os
    import signal

    from vaultsync.daemon import Daemon

    root = fresh_vault.client(fresh_vault.token)
    cfg = write_config(tmp_path, "secret", "approle", {"api": ""})
    assert run_cli("--config", str(cfg), "policies", "apply", str(tmp_path),
                   env=fresh_vault.env(tmp_path, fresh_vault.token)).code == 0
    creds = auth.issue_credentials(root, mount="approle", role="api", wrap_ttl=60)
    auth.write_credentials(creds, tmp_path / "creds")
    settings = config.load(cfg, env={"VAULT_ADDR": fresh_vault.addr, "VAULT_CACERT": fresh_vault.cacert or ""}, overrides={"vault.timeout": 2.0})
    settings = config.Settings(vault=settings.vault, kv=settings.kv, daemon=settings.daemon, services={},
                               auth=AuthSettings(method="approle", mount="approle", role_name="api", secret_id_wrapped=True,
                                                 role_id_file=str(tmp_path / "creds" / "role_id"),
                                                 secret_id_file=str(tmp_path / "creds" / "secret_id")))
    d = Daemon(settings, serve_http=False)
    d._stop.set()  # no scheduler: call the login path directly
    assert d._login()
    os.kill(fresh_vault.pid, signal.SIGSTOP)
    try:
        assert not d._login()
    finally:
        os.kill(fresh_vault.pid, signal.SIGCONT)
    assert d._login(), "the daemon lost its secret_id after a network failure"


def test_policies_apply_creates_the_daemons_own_approle(kv2, root, cli, vault_server, tmp_path):
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\n[auth]\nmethod = "approle"\nmount = "{approle}"\nrole_name = "vaultsync-daemon"\n'
                   'role_id_file = "creds/role_id"\nsecret_id_file = "creds/secret_id"\nsecret_id_wrapped = true\n')
    assert cli("--config", str(cfg), "policies", "apply", str(ROOT / "policies")).code == 0
    role = root.adapter.get(f"/v1/auth/{approle}/role/vaultsync-daemon")["data"]
    assert role["token_policies"] == ["vaultsync-daemon"] and role["token_num_uses"] == 0
    res = cli("--config", str(cfg), "approle", "credentials", "vaultsync-daemon", "--out", str(tmp_path / "creds"), "--wrap-ttl", "60s")
    assert res.code == 0, res.output
    state = auth.login(vault_server.client(), vault_server.settings(), config.load(cfg, env={}).auth)
    assert "vaultsync-daemon" in state.policies
    again = cli("--config", str(cfg), "policies", "apply", str(ROOT / "policies"))
    assert again.code == 0 and "Nothing to change." in again.stdout


def _capabilities(root: hvac.Client, token: str, path: str) -> set[str]:
    return set(root.adapter.post("/v1/sys/capabilities", json={"token": token, "paths": [path]})["data"][path])


@pytest.mark.parametrize("version", [1, 2])
def test_generated_service_policy_grants_no_write_on_its_own_secret(version, root, cli, vault_server, tmp_path):
    """Reads only: a service that could create or update its own secret could poison what the daemon renders."""
    mount = f"ro{version}-" + uuid.uuid4().hex[:8]
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": str(version)})
    try:
        approle = "approle-" + uuid.uuid4().hex[:8]
        cfg = write_config(tmp_path, mount, approle, {"api": 'dynamic = { db = "database/creds/api" }'})
        assert cli("--config", str(cfg), "policies", "apply", "--kv-version", str(version), str(tmp_path)).code == 0
        token = root.auth.token.create(policies=["vaultsync-svc-api"], no_default_policy=True, ttl="5m")["auth"]["client_token"]
        own = {1: [f"{mount}/compose/api"], 2: [f"{mount}/data/compose/api", f"{mount}/metadata/compose/api"]}[version]
        assert _capabilities(root, token, own[0]) == {"read"} | ({"list"} if version == 1 else set())
        for path in own[1:]:
            assert _capabilities(root, token, path) <= {"read", "list"}
        assert _capabilities(root, token, "database/creds/api") == {"read"}
        assert _capabilities(root, token, f"{mount}/data/compose/other" if version == 2 else f"{mount}/compose/other") == {"deny"}
        client = vault_server.client(token)
        with pytest.raises(hvac.exceptions.Forbidden):
            if version == 2:
                client.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"X": "1"}, mount_point=mount)
            else:
                client.secrets.kv.v1.create_or_update_secret(path="compose/api", secret={"X": "1"}, mount_point=mount)
    finally:
        root.sys.disable_secrets_engine(mount)


def test_wrapped_secret_id_of_another_role_is_refused(kv2, root, cli, vault_server, tmp_path):
    """Only auth/<mount>/role/<our role>/secret-id may have created the wrapping token."""
    approle = "approle-" + uuid.uuid4().hex[:8]
    cfg = write_config(tmp_path, kv2, approle, {"api": "", "other": ""})
    assert cli("--config", str(cfg), "policies", "apply", str(tmp_path)).code == 0
    theirs = auth.issue_credentials(root, mount=approle, role="other", wrap_ttl=60)
    with pytest.raises(auth.SecurityError, match=f"auth/{approle}/role/other/secret-id"):
        auth.unwrap_secret_id(vault_server.client(), theirs.secret_id, mount=approle, role="api")
    # Refused before unwrapping: the token is still valid for its owner.
    assert root.adapter.post("/v1/sys/wrapping/unwrap", json={"token": theirs.secret_id})["data"]["secret_id"]
    # Another mount's secret-id endpoint is refused too, even when no role name is configured.
    elsewhere = auth.issue_credentials(root, mount=approle, role="api", wrap_ttl=60)
    with pytest.raises(auth.SecurityError):
        auth.unwrap_secret_id(vault_server.client(), elsewhere.secret_id, mount="approle", role=None)
    ours = auth.issue_credentials(root, mount=approle, role="api", wrap_ttl=60)
    assert auth.unwrap_secret_id(vault_server.client(), ours.secret_id, mount=approle, role="api")
