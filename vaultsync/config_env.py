"""The environment's layer of the settings (the Vault CLI's ``VAULT_*`` variables, each with its
OpenBao ``BAO_*`` alias) and where the token comes from. Tokens are never read from the file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaultsync.errors import ConfigError

if TYPE_CHECKING:
    from vaultsync.config import Settings, VaultSettings


def _env(env: Mapping[str, str], name: str) -> str | None:
    """``VAULT_X`` wins over its OpenBao alias ``BAO_X``; empty counts as unset."""
    return env.get(f"VAULT_{name}") or env.get(f"BAO_{name}") or None


_TRUE = ("1", "t", "true", "yes")
_FALSE = ("0", "f", "false", "no")


def _apply_env(s: Settings, env: Mapping[str, str]) -> Settings:
    vault = s.vault
    changes: dict[str, Any] = {}
    # The Vault CLI's variables (api/client.go ReadEnvironment), each with its OpenBao alias.
    for name, attr in (("ADDR", "addr"), ("TOKEN", "token"), ("CACERT", "cacert"), ("CAPATH", "capath"),
                       ("NAMESPACE", "namespace"), ("CLIENT_CERT", "client_cert"), ("CLIENT_KEY", "client_key"),
                       ("TLS_SERVER_NAME", "tls_server_name")):
        value = _env(env, name)
        if value is not None:
            changes[attr] = value
    if _env(env, "CAPATH") and not _env(env, "CACERT"):
        # A CA file wins over a CA folder (as in the Vault CLI), but not one from a lower layer:
        # VAULT_CAPATH replaces the file's CA settings as a whole.
        changes["cacert"] = None
    skip = _env(env, "SKIP_VERIFY")
    if skip is not None:  # the environment wins over the file, either way
        value = skip.strip().lower()
        if value not in _TRUE + _FALSE:
            raise ConfigError(f"VAULT_SKIP_VERIFY must be true or false, not {skip!r}"[:120])
        changes["tls_verify"] = value not in _TRUE
    return replace(s, vault=replace(vault, **changes))


def _apply_overrides(s: Settings, overrides: Mapping[str, Any]) -> Settings:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, attr = dotted.partition(".")
        current = getattr(s, section)
        s = replace(s, **{section: replace(current, **{attr: value})})
    return s


def resolve_token(vault: VaultSettings) -> str | None:
    """The token, from the first source that has one (see :func:`token_with_source`)."""
    return token_with_source(vault)[0]


def token_with_source(vault: VaultSettings) -> tuple[str | None, str]:
    """The token and where it came from, in the Vault CLI's order: ``VAULT_TOKEN``/``BAO_TOKEN``,
    then ``vault.token_file``, then ``~/.vault-token`` (what ``vault login`` writes)."""
    if vault.token:
        return _clean_token(vault.token, "VAULT_TOKEN (or BAO_TOKEN)"), "environment (VAULT_TOKEN/BAO_TOKEN)"
    if vault.token_file:
        token = _read_token_file(Path(vault.token_file))
        if token is None:
            raise ConfigError(f"{vault.token_file}: the token file (vault.token_file) is empty")
        return token, f"token_file {vault.token_file}"
    helper = Path.home() / ".vault-token"  # as the Vault CLI: absent or empty means no token
    if not helper.exists():
        return None, "none"
    return _read_token_file(helper), str(helper)


def _read_token_file(path: Path) -> str | None:
    """The token in ``path`` (surrounding whitespace and line ends dropped); None if it is empty."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file: {exc.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the token file holds bytes no token has (binary, a BOM, or not ASCII)") from None
    return _clean_token(text, str(path)) or None


def _clean_token(token: str, where: str) -> str:
    """``token`` without surrounding whitespace; one inside (two lines, a space) is an error naming
    ``where`` and never the value: sent as a header it would fail with an opaque message."""
    token = token.strip()
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise ConfigError(f"{where}: the token holds spaces, line breaks or other characters no token has")
    return token
