"""A small file of the lease ids a daemon holds, so that its next run can revoke them
(``daemon.revoke_on_start``): the leases of a SIGKILLed daemon otherwise stay alive,
with their database users, until their TTL.

Lease ids are not credentials, but they name them: the file is written atomically,
mode 0600, in a folder of the daemon's own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from vaultsync.render import atomic_write


def default_path(config_path: str | None) -> Path:
    """``$XDG_STATE_HOME/vaultsync/leases-<hash of the config path>.json``: one file per
    daemon configuration, so two daemons on one host keep apart."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "vaultsync"
    key = hashlib.sha256(os.path.abspath(config_path or "vaultsync.toml").encode()).hexdigest()[:12]
    return base / f"leases-{key}.json"


def load(path: Path) -> list[str]:
    """The lease ids recorded by the previous run ([] when there is no file or it is unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    ids = doc.get("leases") if isinstance(doc, dict) else None
    return [i for i in ids if isinstance(i, str) and i] if isinstance(ids, list) else []


def save(path: Path, lease_ids: Iterable[str]) -> None:
    body = json.dumps({"leases": sorted(set(lease_ids))}, indent=1) + "\n"
    atomic_write(path, body.encode(), mode=0o600)
