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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vaultsync import config_checks
from vaultsync.config_env import _apply_env, _apply_overrides, resolve_token, token_with_source  # noqa: F401 - part of this module's API
from vaultsync.config_schema import _only, _positive, _section
from vaultsync.errors import ConfigError
from vaultsync.formats import STYLES

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
    label: str = ""  # config key `name`; default: the path as written in the config

    @property
    def name(self) -> str:
        """The ``destination`` metric and log label: distinct for ``a/app.env`` and ``b/app.env``."""
        return self.label or Path(self.path).name


@dataclass(frozen=True)
class RotateSpec:
    key: str
    generator: str = "hex"  # hex | base64url | alphanumeric
    length: int = 32
    every: float = 86400.0


@dataclass(frozen=True)
class ExecSettings:
    """``[services.<name>.exec]``: run a command with the service's secrets in its environment."""

    command: tuple[str, ...] = ()
    on_change: str = "restart"  # restart: stop (kill_signal, kill_timeout) and start again | signal: send `signal`
    signal: str = "HUP"
    kill_signal: str = "TERM"
    kill_timeout: float = 30.0
    restart_on_exit: bool = True  # the daemon starts a child that exited again (capped backoff); `vaultsync exec` exits
    env_clear: bool = False  # the child's environment is only the secrets
    wait_min: float = 0.0
    wait_max: float = 0.0


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
    exec: ExecSettings | None = None  # [services.<name>.exec]


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
    exec_ = _exec(body.pop("exec"), src, f"{where}.exec") if "exec" in body else None
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
    return replace(svc, destinations=dests, rotate=rotate, dynamic=dict(svc.dynamic), exec=exec_)


def _wait(item: dict[str, Any], src: str, where: str) -> None:
    """``wait = "5s"`` or ``wait = { min, max }`` into ``wait_min``/``wait_max``."""
    wait = item.pop("wait", None)
    if isinstance(wait, Mapping):
        _only(wait, {"min", "max"}, src, f"{where}.wait")
        item["wait_min"], item["wait_max"] = wait.get("min", 0), wait.get("max", wait.get("min", 0))
    elif wait is not None:
        item["wait_min"] = item["wait_max"] = wait


def _signal_name(value: str, src: str, where: str) -> None:
    sig = value.upper()
    if (sig if sig.startswith("SIG") else "SIG" + sig) not in signal.Signals.__members__:
        raise ConfigError(f"{src}: {where} {value!r} is not a signal name (e.g. HUP, USR1, TERM)")


def _exec(raw: Any, src: str, where: str) -> ExecSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{src}: {where} must be a table")
    item = dict(raw)
    _wait(item, src, where)
    ex = _section(ExecSettings, item, src, where, durations={"kill_timeout", "wait_min", "wait_max"})
    if "command" in item and not ex.command:
        raise ConfigError(f"{src}: {where}.command must not be empty")
    if ex.on_change not in ("restart", "signal"):
        raise ConfigError(f"{src}: {where}.on_change must be \"restart\" or \"signal\"")
    _signal_name(ex.signal, src, f"{where}.signal")
    _signal_name(ex.kill_signal, src, f"{where}.kill_signal")
    _positive(ex.kill_timeout, src, f"{where}.kill_timeout")
    if ex.wait_min < 0 or ex.wait_max < ex.wait_min:
        raise ConfigError(f"{src}: {where}.wait needs 0 <= min <= max")
    return replace(ex, command=tuple(ex.command))


def _destination(item: Mapping[str, Any], src: str, where: str, base_dir: Path) -> Destination:
    config_checks.check_destination(item, Destination, src, where)
    item = dict(item)
    label = item.pop("name", None)
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ConfigError(f"{src}: {where}.name must be a non-empty string (the destination's metric label)")
    item["label"] = label or str(item.get("path") or "")
    _wait(item, src, where)
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
    _signal_name(dest.signal, src, f"{where}.signal")
    if dest.style not in STYLES:
        raise ConfigError(f"{src}: {where}.style must be one of {', '.join(STYLES)}")
    if dest.style == "template" and not dest.template:
        raise ConfigError(f"{src}: {where}: style = \"template\" needs template = \"<file>\"")
    return replace(dest, path=_rel(dest.path, base_dir), template=_rel(dest.template, base_dir),
                   pidfile=_rel(dest.pidfile, base_dir), command=tuple(dest.command))
