"""Least-privilege tokens for the tests, made from the policies vaultsync ships (policies/*.hcl) or
generates (the daemon's).

The shipped policies name the default layout (KV v2 mount ``secret``, prefix ``compose``, database
mount ``database``). Tests run on fresh mounts, so each policy is installed under a unique name with
its mounts (and, for KV v1, its data/metadata paths) rewritten: the capabilities stay exactly those
shipped. Root is for arranging and inspecting only; the command under test gets one of these.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import hvac

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def shipped_policy_text(name: str, *, kv_mount: str = "secret", kv_version: int = 2, prefix: str = "compose",
                        db_mount: str = "database") -> str:
    text = (POLICIES / f"{name}.hcl").read_text()
    text = text.replace('"sys/internal/ui/mounts/secret"', f'"sys/internal/ui/mounts/{kv_mount}"')
    text = text.replace('"database/', f'"{db_mount}/')
    if kv_version == 1:
        # KV v1 has no data/ and metadata/ segments (Vault merges the capabilities of repeated paths).
        text = re.sub(r'"secret/(?:data|metadata)/', f'"{kv_mount}/', text)
        text = text.replace('"secret/metadata"', f'"{kv_mount}"')
    text = text.replace('"secret/', f'"{kv_mount}/')
    return text.replace("/compose", f"/{prefix}")


def install_policy(root: hvac.Client, name: str, **layout: object) -> str:
    """Install the shipped policy ``name`` for this layout under a unique name; return that name."""
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_acl_policy(unique, shipped_policy_text(name, **layout))  # type: ignore[arg-type]
    return unique


def token_for(root: hvac.Client, *policies: str, ttl: str = "30m", default_policy: bool = True, **extra: object) -> str:
    """A renewable token holding exactly ``policies`` (plus ``default`` unless told otherwise)."""
    return root.auth.token.create(policies=list(policies), no_default_policy=not default_policy, ttl=ttl,
                                  renewable=True, **extra)["auth"]["client_token"]


def migrator_token(root: hvac.Client, kv_mount: str, kv_version: int = 2, prefix: str = "compose") -> str:
    """What an operator hands `vaultsync migrate`: the shipped migrator policy only (no default policy)."""
    policy = install_policy(root, "vaultsync-migrator", kv_mount=kv_mount, kv_version=kv_version, prefix=prefix)
    return token_for(root, policy, default_policy=False)


def daemon_policy_text(kv_mount: str, db_mount: str = "database", prefix: str = "compose") -> str:
    """The daemon's policy as `policies apply` generates it (vaultsync.policies.daemon_policy), for a
    config whose one service stands for all of them: ``+`` matches any one path segment, so it fits
    every service, database role and rotated key of the layout (and every test's fresh mounts)."""
    from vaultsync import config, policies, vault

    anyone = config.ServiceSettings(name="+", kv_path=f"{prefix}/+", dynamic={"db": f"{db_mount}/creds/+"},
                                    rotate=(config.RotateSpec(key="+"),))
    settings = config.Settings(kv=config.KVSettings(mount=kv_mount, version=2, prefix=prefix), services={"+": anyone})
    return policies.daemon_policy(settings, vault.KV(None, kv_mount, 2))  # type: ignore[arg-type]


def daemon_token(root: hvac.Client, kv_mount: str, db_mount: str = "database", ttl: str = "30m", **extra: object) -> str:
    """The daemon's identity: its generated policy (see :func:`daemon_policy_text`) and no ``default``
    policy, as the AppRole `policies apply` writes for it."""
    policy = f"vaultsync-daemon-{uuid.uuid4().hex[:8]}"
    root.sys.create_or_update_acl_policy(policy, daemon_policy_text(kv_mount, db_mount))
    return token_for(root, policy, ttl=ttl, default_policy=False, **extra)
