"""Outside tester's finding 12: a dynamic secret's field that renders under a KV key's name
(``db`` + ``username`` -> ``DB_USERNAME``) must not silently replace the KV value."""

from __future__ import annotations

import json

from vaultsync import service_values
from vaultsync.errors import VaultsyncError


def test_merge_refuses_a_dynamic_field_named_like_a_kv_key_and_names_service_and_key():
    try:
        service_values.merge("api", {"DB_USERNAME": "kv-secret-value"}, {"db": {"username": "dyn-secret-value"}})
    except VaultsyncError as exc:
        message = str(exc)
    else:
        raise AssertionError("the collision was not refused")
    assert "service api" in message and "DB_USERNAME" in message
    assert "kv-secret-value" not in message and "dyn-secret-value" not in message


def test_merge_without_a_collision_renders_both_sources():
    assert service_values.merge("api", {"A": "1", "N": 2}, {"db": {"username": "u", "ttl": 5}}) == {
        "A": "1", "N": "2", "DB_USERNAME": "u", "DB_TTL": "5"}


def test_render_of_a_colliding_service_fails_and_leaves_its_file(tmp_path, kv1, kv2, root, cli):
    # A KV v1 secret read through the dynamic-secret path: a real response with data, no lease.
    root.secrets.kv.v1.create_or_update_secret(path="dbcreds", secret={"username": "dyn-user-value"}, mount_point=kv1)
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"DB_USERNAME": "kv-user-value", "A": "1"},
                                               mount_point=kv2)
    root.secrets.kv.v2.create_or_update_secret(path="compose/web", secret={"B": "2"}, mount_point=kv2)
    (tmp_path / "api.env").write_text("A='previous'\n")
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nversion = 2\n'
                   f'[services.api]\ndynamic = {{ db = "{kv1}/dbcreds" }}\n[[services.api.destinations]]\npath = "api.env"\n'
                   '[services.web]\n[[services.web.destinations]]\npath = "web.env"\n')
    res = cli("--config", str(cfg), "render", "--allow-dynamic-leases", "--output", "json")
    assert res.code == 1, res.output
    assert json.loads(res.stdout) == {"api": {str(tmp_path / "api.env"): "failure"},
                                      "web": {str(tmp_path / "web.env"): "success"}}
    assert "DB_USERNAME" in res.stderr and "api" in res.stderr
    assert "kv-user-value" not in res.output and "dyn-user-value" not in res.output
    assert (tmp_path / "api.env").read_text() == "A='previous'\n"
