"""How the daemon gets a token: one small protocol, one class per method (compare Vault Agent's
``command/agentproxyshared/auth`` ``AuthMethod``). A new method is one class here and one line
in :data:`METHODS`; the requests themselves are in :mod:`vaultsync.auth`.
"""

from __future__ import annotations

import os
from typing import Protocol

import hvac

from vaultsync import auth
from vaultsync.config import Settings


class AuthMethod(Protocol):
    name: str

    def login(self, client: hvac.Client) -> auth.TokenState:
        """Authenticate ``client`` (sets its token); raises on failure."""
        ...

    def login_failed(self) -> None:
        """A login failed: drop whatever must be read anew before the next one."""
        ...


class TokenAuth:
    """A token given to us (``VAULT_TOKEN``, ``vault.token_file``): "logging in" reads it again, so
    a token file that an agent rewrites is picked up."""

    name = "token"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def login(self, client: hvac.Client) -> auth.TokenState:
        return auth.login(client, self.settings.vault, self.settings.auth)

    def login_failed(self) -> None:
        pass


def file_id(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns) if st else None


class AppRoleAuth:
    """AppRole: the secret_id is read once (unwrapped, its file removed if asked) and kept for the
    logins after each max TTL, when its file may be gone. When a login fails and the file was
    replaced since (new credentials delivered), the next login reads the new one."""

    name = "approle"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._secret_id: str | None = None
        self._secret_id_stat: tuple[int, int] | None = None  # (inode, mtime) of the file it came from

    def login(self, client: hvac.Client) -> auth.TokenState:
        s = self.settings
        if self._secret_id is None:
            self._secret_id_stat = file_id(s.auth.secret_id_file)
            self._secret_id = auth.read_secret_id(client, s.auth)
        return auth.login(client, s.vault, s.auth, secret_id=self._secret_id)

    def login_failed(self) -> None:
        current = file_id(self.settings.auth.secret_id_file)
        if current is not None and current != self._secret_id_stat:
            self._secret_id = None


METHODS: dict[str, type[TokenAuth] | type[AppRoleAuth]] = {"token": TokenAuth, "approle": AppRoleAuth}


def for_settings(settings: Settings) -> AuthMethod:
    return METHODS[settings.auth.method](settings)
