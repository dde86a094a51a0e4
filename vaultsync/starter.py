"""``vaultsync init``: a starter ``vaultsync.toml``, the commented example of every setting, and the
shipped ``policies/`` (package data, so this works from ``pipx install`` as from a clone)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from vaultsync.errors import BadInput, VaultsyncError

STARTER = """\
# vaultsync.toml: a starting point (vaultsync.example.toml beside it documents every setting).
# Paths are relative to this file. Next: `vaultsync doctor`, then `vaultsync policies apply --dry-run`.

[kv]
mount = "secret"
prefix = "compose"                      # secrets live at secret/compose/<service>

# How the daemon logs in: its own AppRole, created by `vaultsync policies apply`; then
#   vaultsync approle credentials vaultsync-daemon --out creds --wrap-ttl 60s
[auth]
method = "approle"
role_name = "vaultsync-daemon"
role_id_file = "creds/role_id"
secret_id_file = "creds/secret_id"
secret_id_wrapped = true

[daemon]
metrics_addr = "127.0.0.1:9464"

# One table per compose service: `vaultsync migrate api/.env` put its secret at secret/compose/api.
[services.api]
token_ttl = "1h"
token_max_ttl = "4h"

[[services.api.destinations]]
path = "rendered/api.env"               # point the service's env_file here
style = "compose"
"""


def package_data() -> resources.abc.Traversable:
    return resources.files("vaultsync") / "data"


def shipped_policies() -> dict[str, str]:
    folder = package_data() / "policies"
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".hcl")}


def files(example: str | None = None) -> dict[str, str]:
    """Relative path -> content of everything ``init`` writes."""
    out = {"vaultsync.toml": STARTER,
           "vaultsync.example.toml": example or (package_data() / "vaultsync.example.toml").read_text(encoding="utf-8")}
    out.update({f"policies/{name}": text for name, text in shipped_policies().items()})
    return out


def write(folder: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Write the starter files into ``folder``; an existing file is an error unless ``force``
    (nothing is written then: the check comes first)."""
    root = Path(folder)
    planned = {root / rel: text for rel, text in files().items()}
    existing = [str(p) for p in planned if p.exists()]
    if existing and not force:
        raise BadInput(f"{', '.join(existing)} already exist(s): pass --force to replace")
    written = []
    for path, text in planned.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise VaultsyncError(f"{path}: cannot write: {exc.strerror}") from None
        written.append(path)
    return written
