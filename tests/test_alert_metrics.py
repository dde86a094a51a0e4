"""The metrics the lease and token alerts stand on, from a running daemon against the real server:
the granted TTL and the planned renewal time move on every success and never on a failure."""

from __future__ import annotations

import json
import time
import uuid

from tests.daemon_harness import DaemonProc, daemon_env, wait_for
from tests.test_daemon import config, database_engine


def _policy(root, name: str, paths: dict[str, list[str]]) -> None:
    root.sys.create_or_update_policy(name, "\n".join(
        f'path "{p}" {{ capabilities = {json.dumps(caps)} }}' for p, caps in paths.items()))


def test_ttl_and_due_follow_successes_and_stand_still_on_failures(kv2, root, vault_server, postgres_server, tmp_path):
    db = database_engine(root, postgres_server, default_ttl="12s", max_ttl="10m")
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    policy = "metrics-" + uuid.uuid4().hex[:8]
    own = {"auth/token/lookup-self": ["read"], "auth/token/renew-self": ["update"], f"{kv2}/data/compose/*": ["read"]}
    _policy(root, policy, {**own, f"{db}/creds/api": ["read"], "sys/leases/renew": ["update"], "sys/leases/revoke": ["update"]})
    token = root.auth.token.create(policies=[policy], no_default_policy=True, ttl="1h", renewable=True)["auth"]["client_token"]
    cfg = config(tmp_path, kv2, f'[services.api]\ndynamic = {{ db = "{db}/creds/api" }}\n[[services.api.destinations]]\npath = "api.env"\n')
    started = time.time()
    d = DaemonProc(cfg, daemon_env(vault_server, token, tmp_path), tmp_path).start()
    try:
        lease = {"service": "api", "secret": "db"}
        assert d.metric("vaultsync_lease_ttl_seconds", **lease) == 12
        expiry = d.metric("vaultsync_lease_expiry_timestamp_seconds", **lease)
        due = d.metric("vaultsync_lease_renewal_due_timestamp_seconds", **lease)
        # planned at ~2/3 of the TTL plus up to a third of a 10-20 % grace
        assert expiry - 12 - 1 < started + 30 and 12 * 0.66 <= due - (expiry - 12) <= 12 * 0.74, (due, expiry)
        # the token: 1 h granted, renewal planned at ~2/3 of it
        assert 3590 <= d.metric("vaultsync_token_ttl_seconds") <= 3600  # lookup happens a moment after creation
        token_due = d.metric("vaultsync_token_renewal_due_timestamp_seconds") - time.time()
        assert 3600 * 0.66 - 30 <= token_due <= 3600 * 0.74, token_due

        # A renewal moves both: the due time jumps forward, the expiry too.
        wait_for(lambda: d.metric("vaultsync_lease_renewal_due_timestamp_seconds", **lease) > due, 20, "a renewal")
        renewed_due = d.metric("vaultsync_lease_renewal_due_timestamp_seconds", **lease)
        assert d.metric("vaultsync_lease_expiry_timestamp_seconds", **lease) > expiry

        # Renewals and re-issues fail from now on: due and TTL stand still, however many attempts fail.
        _policy(root, policy, own)
        failures = d.metric("vaultsync_renewals_total", kind="lease", result="failure")
        wait_for(lambda: d.metric("vaultsync_renewals_total", kind="lease", result="failure") > failures, 30, "a failed renewal")
        wait_for(lambda: d.count("dynamic secret read failed") >= 2, 30, "failed re-issues")
        assert d.metric("vaultsync_lease_renewal_due_timestamp_seconds", **lease) == renewed_due
        assert d.metric("vaultsync_lease_ttl_seconds", **lease) == 12
        assert time.time() > renewed_due, "the planned renewal is overdue"
    finally:
        d.stop()
