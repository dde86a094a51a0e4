"""The daemon's own policy, generated from vaultsync.toml (issue 10, finding 3): every grant is
needed, and nothing more is allowed.

Like the migrator test: the exact requests the daemon makes (through the daemon's own functions:
token lookup/renew/revoke, KV version detection, KV reads, dynamic secret reads, lease renew and
revoke, a rotation with its lock) all succeed with the generated policy, and with any one path
block removed at least one of them is denied. Then, with the whole policy, everything the daemon
does not need is denied: other services' secrets, other database roles, other leases, writes to a
secret it does not rotate, the lease endpoints of the ``default`` policy.
"""

from __future__ import annotations

import re
import time
import uuid

import hvac
import hvac.exceptions
import pytest

from tests.test_daemon import database_engine
from vaultsync import auth, config, policies, rotation, vault
from vaultsync.errors import VaultsyncError


@pytest.fixture
def layout(kv2, root, postgres_server, tmp_path):
    db = database_engine(root, postgres_server, default_ttl="1m", max_ttl="5m")
    root.adapter.post(f"/v1/{db}/roles/admin", json={  # a role the daemon must not get
        "db_name": "pg", "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';"],
        "default_ttl": "1m", "max_ttl": "5m"})
    root.adapter.post(f"/v1/{db}/config/pg", json={"allowed_roles": ["api", "admin"]})
    for name in ("api", "web", "other"):
        root.secrets.kv.v2.create_or_update_secret(path=f"compose/{name}", secret={"A": name}, mount_point=kv2)
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(
        f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n'
        f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n'
        '[[services.api.rotate]]\nkey = "SESSION_KEY"\nevery = "1h"\n'
        '[services.web]\n'
    )
    return config.load(cfg, env={}), db, kv2


def _blocks(text: str) -> list[str]:
    return re.findall(r'(?:# [^\n]*\n)?path "[^"]+" \{\n[^}]*\}', text)


def _token(root: hvac.Client, server, text: str) -> hvac.Client:
    name = "dp-" + uuid.uuid4().hex[:8]
    root.sys.create_or_update_acl_policy(name, text)
    token = root.auth.token.create(policies=[name], no_default_policy=True, ttl="10m", renewable=True)["auth"]["client_token"]
    return server.client(token)


def _daemon_requests(client: hvac.Client, settings: config.Settings) -> dict[str, str]:
    """The daemon's requests, in its order, through its own functions; {step: error} of those denied."""
    denied: dict[str, str] = {}

    def step(name: str, fn) -> object:
        try:
            return fn()
        except (VaultsyncError, hvac.exceptions.VaultError) as exc:
            denied[name] = str(exc)
            return None

    step("lookup-self", lambda: auth.lookup_self(client))
    version = step("detect kv version", lambda: vault.detect_kv_version(client, settings.kv.mount)) or 2
    kv = vault.KV(client, settings.kv.mount, version)
    for svc in settings.services.values():
        step(f"read {svc.name}", lambda svc=svc: kv.read(svc.kv_path))
        for name, path in svc.dynamic.items():
            resp = step(f"issue {svc.name}/{name}", lambda path=path: client.adapter.get(f"/v1/{path}"))
            if resp:
                lease_id = resp["lease_id"]
                step(f"renew {svc.name}/{name}", lambda lease_id=lease_id: vault.renew_lease(client, lease_id, 60))
                step(f"revoke {svc.name}/{name}", lambda lease_id=lease_id: vault.revoke_lease(client, lease_id))
        for spec in svc.rotate:
            step(f"rotate {svc.name}/{spec.key}", lambda svc=svc, spec=spec: rotation.rotate_if_due(
                kv, svc.name, svc.kv_path, spec, holder="t", now=time.time(), lock_ttl=60))
    step("renew-self", lambda: auth.renew_self(client, 600))
    step("revoke-self", lambda: client.auth.token.revoke_self())
    return denied


def test_every_grant_of_the_generated_daemon_policy_is_needed(layout, root, vault_server):
    settings, db, kv2 = layout
    text = policies.daemon_policy(settings, vault.KV(root, kv2, 2))
    blocks = _blocks(text)
    assert len(blocks) == 9, text  # api: kv, lock, db read/renew/revoke; web: kv; token x3
    assert _daemon_requests(_token(root, vault_server, text), settings) == {}
    for i, block in enumerate(blocks):
        without = text.replace(block, "")
        denied = _daemon_requests(_token(root, vault_server, without), settings)
        assert denied, f"grant not needed by any daemon request:\n{block}"
        # (a token that may not look itself up reads as invalid: the server answers 403 to both)
        assert all(any(w in e for w in ("permission denied", "no access", "invalid token")) for e in denied.values()), denied


def test_the_generated_daemon_policy_allows_nothing_more(layout, root, vault_server, kv2):
    settings, db, _ = layout
    client = _token(root, vault_server, policies.daemon_policy(settings, vault.KV(root, kv2, 2)))
    others_lease = root.adapter.get(f"/v1/{db}/creds/admin")["lease_id"]
    api_lease = root.adapter.get(f"/v1/{db}/creds/api")["lease_id"]  # another holder's lease of a declared role
    forbidden = {
        "another service's secret": lambda: client.adapter.get(f"/v1/{kv2}/data/compose/other"),
        "write a secret it does not rotate": lambda: client.adapter.post(f"/v1/{kv2}/data/compose/web", json={"data": {"A": "x"}}),
        "another database role": lambda: client.adapter.get(f"/v1/{db}/creds/admin"),
        "renew another role's lease (path form)": lambda: vault.renew_lease(client, others_lease, 60),
        "revoke another role's lease (path form)": lambda: vault.revoke_lease(client, others_lease),
        "renew by body (default policy's form)": lambda: client.sys.renew_lease(lease_id=api_lease),
        "revoke by body": lambda: client.sys.revoke_lease(lease_id=api_lease),
        "look up a lease": lambda: client.adapter.put("/v1/sys/leases/lookup", json={"lease_id": api_lease}),
        "revoke a prefix": lambda: client.adapter.put(f"/v1/sys/leases/revoke-prefix/{db}/creds/api"),
        "list policies": lambda: client.sys.list_acl_policies(),
        "cubbyhole": lambda: client.adapter.get("/v1/cubbyhole/x"),
        "locks of other services": lambda: client.adapter.get(f"/v1/{kv2}/data/vaultsync/locks/web/X"),
    }
    allowed = []
    for what, fn in forbidden.items():
        try:
            fn()
            allowed.append(what)
        except hvac.exceptions.Forbidden:
            pass
    assert allowed == []
    # The exposure that remains (SECURITY.md): a lease of a declared role held by someone else can be renewed.
    vault.renew_lease(client, api_lease, 60)


def test_roles_have_no_default_policy_and_a_finite_secret_id_ttl(layout, root, cli, tmp_path):
    settings, db, kv2 = layout
    approle = "ar-" + uuid.uuid4().hex[:8]
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(cfg.read_text() + f'[auth]\nmethod = "approle"\nmount = "{approle}"\nrole_name = "vaultsync-daemon"\n'
                   'bound_cidrs = ["127.0.0.1/32"]\n')
    empty = tmp_path / "none"
    empty.mkdir()
    res = cli("--config", str(cfg), "policies", "apply", str(empty))
    assert res.code == 0, res.output
    for role in ("vaultsync-daemon", "api", "web"):
        params = root.adapter.get(f"/v1/auth/{approle}/role/{role}")["data"]
        assert params["token_no_default_policy"] is True and params["secret_id_ttl"] == 30 * 86400, (role, params)
    daemon = root.adapter.get(f"/v1/auth/{approle}/role/vaultsync-daemon")["data"]
    for key in ("token_bound_cidrs", "secret_id_bound_cidrs"):
        assert policies._normal(key, daemon[key]) == ["127.0.0.1/32"], daemon
    again = cli("--config", str(cfg), "policies", "apply", str(empty))
    assert again.code == 0 and "Nothing to change." in again.stdout, again.output


def test_vaultsync_render_runs_with_only_the_generated_policy(layout, root, vault_server, cli, tmp_path):
    settings, db, kv2 = layout
    text = policies.daemon_policy(settings, vault.KV(root, kv2, 2))
    name = "dp-" + uuid.uuid4().hex[:8]
    root.sys.create_or_update_acl_policy(name, text)
    token = root.auth.token.create(policies=[name], no_default_policy=True, ttl="10m")["auth"]["client_token"]
    cfg = tmp_path / "render.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n'
                   f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n'
                   '[[services.api.destinations]]\npath = "out/api.env"\n'
                   '[services.web]\n[[services.web.destinations]]\npath = "out/web.env"\n')
    res = cli("--config", str(cfg), "render", "--allow-dynamic-leases", env={"VAULT_TOKEN": token})
    assert res.code == 0, res.output
    assert "DB_PASSWORD=" in (tmp_path / "out" / "api.env").read_text()


def test_a_service_token_can_renew_its_own_leases_but_not_look_up_or_renew_others(layout, root, cli, vault_server, tmp_path):
    """Service tokens no longer carry `default` (whose sys/leases/renew|lookup accept any lease id)."""
    settings, db, kv2 = layout
    approle = "ar-" + uuid.uuid4().hex[:8]
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(cfg.read_text() + f'[auth]\nmount = "{approle}"\n')
    empty = tmp_path / "none"
    empty.mkdir()
    assert cli("--config", str(cfg), "policies", "apply", str(empty)).code == 0
    creds = auth.issue_credentials(root, mount=approle, role="web")  # web declares no dynamic secret
    web = vault_server.client()
    web.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id, mount_point=approle, use_token=True)
    creds = auth.issue_credentials(root, mount=approle, role="api")
    api = vault_server.client()
    api.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id, mount_point=approle, use_token=True)
    lease = api.adapter.get(f"/v1/{db}/creds/api")["lease_id"]
    vault.renew_lease(api, lease, 60)  # its own: fine
    assert web.auth.token.lookup_self()["data"]["policies"] == ["vaultsync-svc-web"]
    for what, fn in {
        "lookup another service's lease": lambda: web.adapter.put("/v1/sys/leases/lookup", json={"lease_id": lease}),
        "renew it (body form)": lambda: web.sys.renew_lease(lease_id=lease),
        "renew it (path form)": lambda: vault.renew_lease(web, lease, 60),
        "revoke it": lambda: vault.revoke_lease(web, lease),
    }.items():
        with pytest.raises(hvac.exceptions.Forbidden):
            fn()
            pytest.fail(f"a service token may {what}")


def test_the_daemon_runs_renews_rotates_and_revokes_with_only_the_generated_policy(kv2, root, vault_server, postgres_server,
                                                                                  tmp_path):
    from tests.daemon_harness import DaemonProc, daemon_env, wait_for

    db = database_engine(root, postgres_server, default_ttl="4s", max_ttl="30s")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n[daemon]\npoll_interval = "1s"\nlease_revoke_grace = "1s"\n'
                   'revoke_on_exit = true\n'
                   f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n'
                   '[[services.api.destinations]]\npath = "out/api.env"\n'
                   '[[services.api.rotate]]\nkey = "SESSION_KEY"\nevery = "1h"\n')
    settings = config.load(cfg, env={})
    name = "dp-" + uuid.uuid4().hex[:8]
    root.sys.create_or_update_acl_policy(name, policies.daemon_policy(settings, vault.KV(root, kv2, 2)))
    token = root.auth.token.create(policies=[name], no_default_policy=True, ttl="10m", renewable=True)["auth"]["client_token"]
    d = DaemonProc(cfg, daemon_env(vault_server, token, tmp_path), tmp_path).start()
    try:
        wait_for(lambda: d.count("lease renewed") >= 2, 30, "two lease renewals under the generated policy")
        wait_for(lambda: "SESSION_KEY=" in (tmp_path / "out" / "api.env").read_text(), 15, "the rotated key rendered")
        assert d.metric("vaultsync_renewals_total", kind="lease", result="failure") == 0
        assert d.metric("vaultsync_rotations_total", service="api", result="failure") == 0
    finally:
        assert d.stop() == 0
    assert d.count("lease revoke failed") == 0 and d.count("token revoked") == 1, d.tail()


def test_a_service_with_its_own_policies_gets_the_token_self_bits_and_no_default(kv2, root, cli, vault_server, tmp_path):
    approle = "ar-" + uuid.uuid4().hex[:8]
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "team-read.hcl").write_text(f'path "{kv2}/data/compose/team" {{\n  capabilities = ["read"]\n}}\n')
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\n[auth]\nmount = "{approle}"\n[services.team]\npolicies = ["team-read"]\n')
    res = cli("--config", str(cfg), "policies", "apply", str(folder))
    assert res.code == 0, res.output
    role = root.adapter.get(f"/v1/auth/{approle}/role/team")["data"]
    assert sorted(role["token_policies"]) == ["team-read", "vaultsync-token-self"] and role["token_no_default_policy"]
    creds = auth.issue_credentials(root, mount=approle, role="team")
    client = vault_server.client()
    client.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id, mount_point=approle, use_token=True)
    assert auth.lookup_self(client).policies == ("team-read", "vaultsync-token-self")
    auth.renew_self(client, 60)
