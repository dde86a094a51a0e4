"""Errors that name the next step: what to add to vaultsync.toml, which command to run.

Pure: settings in, message out. The workflow (migrate -> policies apply -> credentials -> daemon)
has one step people cannot guess: the daemon's AppRole only exists once vaultsync.toml says the
daemon logs in with AppRole.
"""

from __future__ import annotations

from vaultsync.config import Settings

DAEMON_ROLE = "vaultsync-daemon"


def auth_table(role: str = DAEMON_ROLE, folder: str = "/etc/vaultsync") -> str:
    return (
        "[auth]\n"
        'method = "approle"\n'
        f'role_name = "{role}"\n'
        f'role_id_file = "{folder}/role_id"\n'
        f'secret_id_file = "{folder}/secret_id"\n'
    )


def missing_role(settings: Settings, role: str, mount: str) -> str:
    """Why ``role`` is not on ``auth/<mount>`` and what makes it exist."""
    where = settings.source or "vaultsync.toml"
    if role in settings.services:
        return (f"no AppRole {role!r} on auth/{mount} yet: run `vaultsync policies apply` (it creates one AppRole per "
                f"[services.*] of {where})")
    daemon_role = settings.auth.role_name if settings.auth.method == "approle" else None
    if role == daemon_role:
        return f"no AppRole {role!r} on auth/{mount} yet: run `vaultsync policies apply` with {where} first"
    if role == DAEMON_ROLE or settings.auth.method != "approle":
        return (
            f"no AppRole {role!r} on auth/{mount}: `vaultsync policies apply` creates the daemon's AppRole only when "
            f"the config says the daemon logs in with AppRole. Add these lines to {where}, then run "
            f"`vaultsync policies apply` again:\n\n{auth_table(role)}"
        )
    return (f"no AppRole {role!r} on auth/{mount}: it is neither a [services.{role}] of {where} nor auth.role_name "
            f"({daemon_role!r}); add [services.{role}] with a kv_path and run `vaultsync policies apply`")
