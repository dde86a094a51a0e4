"""Typed settings: defaults, then ``vaultsync.toml``, then environment, then flags.

The file is read with the standard library's ``tomllib``. Unknown keys are an
error (a typo must not silently fall back to a default), and every error names
the file and the offending key. Tokens are never read from the file: they come
from ``VAULT_TOKEN``/``BAO_TOKEN``, a token file, or AppRole.
"""

from __future__ import annotations

import os
import re
import signal
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vaultsync import config_checks
from vaultsync.errors import ConfigError
from vaultsync.formats import STYLES
from vaultsync.leases import parse_duration

DEFAULT_CONFIG = "vaultsync.toml"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Vault lower-cases policy and AppRole names; a mixed-case name would never match itself again.
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


@dataclass(frozen=True)
class VaultSettings:
    addr: str = "http://127.0.0.1:8200"
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    cacert: str | None = None
    capath: str | None = None
    namespace: str | None = None
    tls_verify: bool = True
    client_cert: str | None = None  # mTLS: PEM certificate, with client_key
    client_key: str | None = None
    tls_server_name: str | None = None  # SNI and the name the server's certificate must carry
    timeout: float = 30.0


@dataclass(frozen=True)
class KVSettings:
    mount: str = "secret"
    version: int | None = None  # None: detect from the mount
    prefix: str = "compose"


@dataclass(frozen=True)
class SourceSpec:
    """One .env file to migrate and where it goes."""

    file: str
    service: str | None = None
    path: str | None = None  # secret path under the mount; overrides prefix/service
    split: Mapping[str, str] = field(default_factory=dict)  # key prefix -> secret path
    strip_prefix: bool = False


@dataclass(frozen=True)
class MigrateSettings:
    concurrency: int = 8
    max_secret_bytes: int = 512 * 1024
    sources: tuple[SourceSpec, ...] = ()


@dataclass(frozen=True)
class AuthSettings:
    method: str = "token"  # token | approle
    mount: str = "approle"
    role_name: str | None = None
    role_id_file: str | None = None
    secret_id_file: str | None = None
    secret_id_wrapped: bool = False
    remove_secret_id_file: bool = False
    secret_id_ttl: float = 30 * 86400.0  # of the daemon's own AppRole (policies apply)
    bound_cidrs: tuple[str, ...] = ()  # where the daemon's secret_id and tokens may be used from


@dataclass(frozen=True)
class Destination:
    path: str
    style: str = "dotenv"  # dotenv | compose | docker | shell | systemd | json | template (vaultsync.formats)
    template: str | None = None  # file holding a Jinja2 template, for style = "template"
    mode: int = 0o600
    owner: str | int | None = None  # user (name or uid) the file belongs to; default: the user vaultsync runs as
    group: str | int | None = None  # group (name or gid); default: vaultsync's own
    backup: bool = False
    command: tuple[str, ...] = ()
    command_timeout: float = 30.0
    pidfile: str | None = None
    signal: str = "HUP"
    wait_min: float = 0.0
    wait_max: float = 0.0

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class RotateSpec:
    key: str
    generator: str = "hex"  # hex | base64url | alphanumeric
    length: int = 32
    every: float = 86400.0


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    kv_path: str
    optional: bool = False  # a missing kv_path renders as no keys instead of failing (SourceMissing)
    policies: tuple[str, ...] = ()
    token_ttl: float = 3600.0
    token_max_ttl: float = 4 * 3600.0
    token_period: float | None = None
    secret_id_ttl: float = 30 * 86400.0  # finite: a leaked secret_id stops working (0 = never expires)
    secret_id_num_uses: int = 0
    bound_cidrs: tuple[str, ...] = ()
    dynamic: Mapping[str, str] = field(default_factory=dict)  # name -> path, e.g. db -> database/creds/api
    destinations: tuple[Destination, ...] = ()
    rotate: tuple[RotateSpec, ...] = ()
    on_delete: str = "keep"  # KV secret deleted or absent: keep the last files, or render "empty" (no KV keys)


#: Smallest ``length`` per generator: hex and base64url count random bytes, alphanumeric
#: characters; each minimum is about 128 bits of randomness.
ROTATE_MIN_LENGTH = {"hex": 16, "base64url": 16, "alphanumeric": 22}


@dataclass(frozen=True)
class DaemonSettings:
    poll_interval: float = 60.0
    metrics_addr: str = "127.0.0.1:9464"
    status_token_file: str | None = None  # /status then needs "Authorization: Bearer <token>" (else: loopback only)
    revoke_on_exit: bool = False
    lease_revoke_grace: float = 30.0
    lock_ttl: float = 60.0
    revoke_on_start: bool = False  # revoke the leases the previous run recorded (see state_file)
    state_file: str | None = None  # where lease ids are recorded; default under $XDG_STATE_HOME/vaultsync


@dataclass(frozen=True)
class Settings:
    vault: VaultSettings = field(default_factory=VaultSettings)
    kv: KVSettings = field(default_factory=KVSettings)
    migrate: MigrateSettings = field(default_factory=MigrateSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    services: Mapping[str, ServiceSettings] = field(default_factory=dict)
    events: Any = None  # vaultsync.events.KafkaSettings when [events] kafka = {...} is set
    source: str | None = None  # the file these came from, for messages


# --- loading -----------------------------------------------------------------


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings: defaults < file < environment < ``overrides`` (flags).

    ``path=None`` reads ``./vaultsync.toml`` when it exists. ``overrides`` holds
    dotted keys such as ``"vault.addr"`` or ``"kv.version"``; ``None`` values are
    ignored so Click options that were not given do not mask the file.
    """
    env = os.environ if env is None else env
    explicit = path is not None
    path = Path(path if path is not None else DEFAULT_CONFIG)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    elif explicit:
        raise ConfigError(f"{path}: config file not found")
    settings = _from_dict(raw, str(path), base_dir=path.parent)
    settings = _apply_env(settings, env)
    return _apply_overrides(settings, overrides or {})


def _from_dict(raw: Mapping[str, Any], src: str, base_dir: Path) -> Settings:
    _only(raw, {"vault", "kv", "migrate", "auth", "daemon", "services", "events"}, src, "")
    vault = _section(VaultSettings, raw.get("vault", {}), src, "vault", durations={"timeout"}, forbid={"token"})
    kv = _section(KVSettings, raw.get("kv", {}), src, "kv")
    if kv.version not in (None, 1, 2):
        raise ConfigError(f"{src}: kv.version must be 1 or 2")
    mig_raw = dict(raw.get("migrate", {}))
    sources = tuple(
        _source(item, src, f"migrate.sources[{i}]", base_dir) for i, item in enumerate(mig_raw.pop("sources", []))
    )
    migrate = replace(_section(MigrateSettings, mig_raw, src, "migrate"), sources=sources)
    auth = _section(AuthSettings, raw.get("auth", {}), src, "auth", durations={"secret_id_ttl"})
    # Files named in the config are relative to the config file, like destinations.
    auth = replace(auth, role_id_file=_rel(auth.role_id_file, base_dir), secret_id_file=_rel(auth.secret_id_file, base_dir))
    vault = replace(vault, token_file=_rel(vault.token_file, base_dir), cacert=_rel(vault.cacert, base_dir),
                    capath=_rel(vault.capath, base_dir), client_cert=_rel(vault.client_cert, base_dir),
                    client_key=_rel(vault.client_key, base_dir))
    if auth.method not in ("token", "approle"):
        raise ConfigError(f"{src}: auth.method must be 'token' or 'approle'")
    daemon = _section(
        DaemonSettings, raw.get("daemon", {}), src, "daemon", durations={"poll_interval", "lease_revoke_grace", "lock_ttl"}
    )
    daemon = replace(daemon, status_token_file=_rel(daemon.status_token_file, base_dir))
    _positive(daemon.poll_interval, src, "daemon.poll_interval")
    config_checks.check_poll_interval(daemon.poll_interval, src)
    _positive(daemon.lock_ttl, src, "daemon.lock_ttl")
    if daemon.lease_revoke_grace < 0:
        raise ConfigError(f"{src}: daemon.lease_revoke_grace must not be negative")
    for name in raw.get("services", {}):
        if not _SERVICE_NAME.match(name):
            raise ConfigError(f"{src}: service name {name!r} must be lower case letters, digits, '_', '.', '-' "
                              "(Vault lower-cases policy and AppRole names)")
    services = {
        name: _service(name, body, src, kv.prefix, base_dir) for name, body in raw.get("services", {}).items()
    }
    writers: dict[str, str] = {}
    for name, svc in services.items():
        for dest in svc.destinations:
            other = writers.setdefault(os.path.normpath(dest.path), name)
            if other != name:
                raise ConfigError(f"{src}: services.{name}: destination {dest.path} is also written by services.{other}")
    config_checks.check_one_writer(services, src)
    daemon = replace(daemon, state_file=_rel(daemon.state_file, base_dir))
    return Settings(vault=vault, kv=kv, migrate=migrate, auth=auth, daemon=daemon, services=services,
                    events=_events(raw.get("events", {}), src), source=src)


def _events(raw: Any, src: str) -> Any:
    from vaultsync.events import EventConfigError, KafkaSettings

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{src}: events must be a table")
    _only(raw, {"kafka"}, src, "events")
    if "kafka" not in raw:
        return None
    if not isinstance(raw["kafka"], Mapping):
        raise ConfigError(f"{src}: events.kafka must be a table")
    try:
        return KafkaSettings.from_table(raw["kafka"], where="events.kafka")
    except EventConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None


def _rel(path: str | None, base_dir: Path) -> str | None:
    return path if not path or os.path.isabs(path) else str(base_dir / path)


def _source(item: Mapping[str, Any], src: str, where: str, base_dir: Path) -> SourceSpec:
    spec = _section(SourceSpec, item, src, where)
    return replace(spec, file=_rel(spec.file, base_dir), split=dict(spec.split))


def _service(name: str, body: Mapping[str, Any], src: str, prefix: str, base_dir: Path) -> ServiceSettings:
    where = f"services.{name}"
    body = dict(body)
    dests = tuple(_destination(d, src, f"{where}.destinations[{i}]", base_dir) for i, d in enumerate(body.pop("destinations", [])))
    rotate = tuple(
        _section(RotateSpec, r, src, f"{where}.rotate[{i}]", durations={"every"}) for i, r in enumerate(body.pop("rotate", []))
    )
    if "name" in body:
        raise ConfigError(f"{src}: unknown setting {where}.name (the table's name is the service's name)")
    paths = [d.path for d in dests]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"{src}: {where}.destinations: two destinations write the same file")
    body.setdefault("kv_path", "/".join(p for p in (prefix, name) if p))
    svc = _section(
        ServiceSettings,
        {"name": name, **body},
        src,
        where,
        durations={"token_ttl", "token_max_ttl", "token_period", "secret_id_ttl"},
    )
    for i, r in enumerate(rotate):
        _positive(r.every, src, f"{where}.rotate[{i}].every")
        if not _ENV_NAME.match(r.key):
            raise ConfigError(f"{src}: {where}.rotate: key {r.key!r} is not a valid variable name")
        if r.generator not in ROTATE_MIN_LENGTH:
            raise ConfigError(f"{src}: {where}.rotate: generator must be hex, base64url or alphanumeric")
        if r.length < ROTATE_MIN_LENGTH[r.generator]:
            unit = "characters" if r.generator == "alphanumeric" else "bytes"
            raise ConfigError(f"{src}: {where}.rotate[{i}].length must be at least {ROTATE_MIN_LENGTH[r.generator]} "
                              f"{unit} for generator {r.generator!r} (got {r.length})")
    config_checks.check_policy_paths(name, svc.kv_path, svc.dynamic, src)
    if svc.on_delete not in ("keep", "empty"):
        raise ConfigError(f"{src}: {where}.on_delete must be \"keep\" or \"empty\"")
    return replace(svc, destinations=dests, rotate=rotate, dynamic=dict(svc.dynamic))


def _destination(item: Mapping[str, Any], src: str, where: str, base_dir: Path) -> Destination:
    config_checks.check_destination(item, Destination, src, where)
    item = dict(item)
    wait = item.pop("wait", None)
    if isinstance(wait, Mapping):
        _only(wait, {"min", "max"}, src, f"{where}.wait")
        item["wait_min"], item["wait_max"] = wait.get("min", 0), wait.get("max", wait.get("min", 0))
    elif wait is not None:
        item["wait_min"] = item["wait_max"] = wait
    if isinstance(item.get("mode"), str):
        try:
            item["mode"] = int(item["mode"], 8)
        except ValueError:
            raise ConfigError(f"{src}: {where}.mode must be an octal string like \"0600\"") from None
    dest = _section(Destination, item, src, where, durations={"command_timeout", "wait_min", "wait_max"})
    if not 0 <= dest.mode <= 0o777:
        raise ConfigError(f"{src}: {where}.mode must be a permission like \"0600\" (as a string)")
    _positive(dest.command_timeout, src, f"{where}.command_timeout")
    # owner/group names are resolved when writing (a config is also loaded where the user does
    # not exist, e.g. by `policies apply` on an admin's machine): an unknown one fails that destination.
    if dest.wait_min < 0 or dest.wait_max < dest.wait_min:
        raise ConfigError(f"{src}: {where}.wait needs 0 <= min <= max")
    sig = dest.signal.upper()
    if (sig if sig.startswith("SIG") else "SIG" + sig) not in signal.Signals.__members__:
        raise ConfigError(f"{src}: {where}.signal {dest.signal!r} is not a signal name (e.g. HUP, USR1, TERM)")
    if dest.style not in STYLES:
        raise ConfigError(f"{src}: {where}.style must be one of {', '.join(STYLES)}")
    if dest.style == "template" and not dest.template:
        raise ConfigError(f"{src}: {where}: style = \"template\" needs template = \"<file>\"")
    return replace(dest, path=_rel(dest.path, base_dir), template=_rel(dest.template, base_dir),
                   pidfile=_rel(dest.pidfile, base_dir), command=tuple(dest.command))


def _only(raw: Mapping[str, Any], allowed: set[str], src: str, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        at = f"{where}." if where else ""
        raise ConfigError(f"{src}: unknown setting {at}{unknown[0]} (allowed: {', '.join(sorted(allowed))})")


def _section(cls: type, raw: Any, src: str, where: str, *, durations: set[str] = frozenset(), forbid: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{src}: {where} must be a table")
    for key in forbid:
        if key in raw:
            raise ConfigError(f"{src}: {where}.{key} may not be set in a file; use an environment variable or a token file")
    names = {f.name for f in fields(cls)} - {"token"}
    _only(raw, names, src, where)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in durations and value is not None:
            try:
                value = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"{src}: {where}.{key}: {exc}") from None
        elif isinstance(value, list):
            value = tuple(value)
        if not _conforms(value, hints[key]):
            raise ConfigError(f"{src}: {where}.{key} must be {_describe(hints[key])}, not {type(value).__name__} {value!r}"[:300])
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{src}: {where}: {exc}") from None


def _conforms(value: Any, tp: Any) -> bool:
    """Does a TOML value fit a dataclass field's type? (bool is not an int here.)"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_conforms(v, args[0]) for v in value)
    if origin in (Mapping, dict):
        return isinstance(value, Mapping) and all(isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items())
    return isinstance(value, origin or tp)


def _describe(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _describe(args[0])
    return {bool: "true or false", int: "a whole number", float: "a number or a duration", str: "a string"}.get(
        tp, "a list of strings" if typing.get_origin(tp) is tuple else "a table of strings" if typing.get_origin(tp) in (Mapping, dict) else str(tp)
    )


def _positive(value: float | None, src: str, where: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{src}: {where} must be more than 0")


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
