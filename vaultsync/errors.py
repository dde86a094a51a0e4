"""Exceptions that map to the command line's exit codes.

Every message here is shown to people and written to logs, so none may carry a
secret value: they name files, lines, keys and paths, never what is stored.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_CONFLICT = 3


class VaultsyncError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FAILURE


class BadInput(VaultsyncError):
    """The user's files or flags are wrong; nothing was written."""

    exit_code = EXIT_BAD_INPUT


class ParseError(BadInput):
    """A .env file could not be read. ``str()`` is ``file:line: reason``."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


class ConfigError(BadInput):
    """``vaultsync.toml`` or a flag is invalid."""


class RoleNotFound(ConfigError):
    """An AppRole the command needs does not exist on the server."""

    def __init__(self, role: str, mount: str, message: str) -> None:
        self.role, self.mount = role, mount
        super().__init__(message)


class Conflict(VaultsyncError):
    """Someone else changed a secret between plan and apply (check-and-set failed)."""

    exit_code = EXIT_CONFLICT


class VaultError(VaultsyncError):
    """The server refused or failed a request (permission denied, sealed, down)."""


class TokenInvalid(VaultError):
    """The server refused the token itself: invalid, expired or revoked (not a missing policy)."""


class SourceMissing(VaultsyncError):
    """A service's KV path holds nothing (typo, deleted, not migrated yet).

    Rendering it would write an empty env file and a restarted service would
    lose its whole environment, so it is a failure unless the source is
    marked ``optional = true``. ``str()`` names the service and the path.
    """

    def __init__(self, service: str, path: str) -> None:
        self.service, self.path = service, path
        super().__init__(
            f"service {service}: secret {path} does not exist (not migrated yet, or a typo in kv_path?); "
            "nothing rendered. Set optional = true on the service to render it empty instead"
        )


class OutcomeUnknown(VaultError):
    """The request was sent but no answer came (timed out, connection dropped): it may
    or may not have taken effect."""


class Unreachable(VaultError):
    """The request never reached the server (connection refused, connect timeout)."""
