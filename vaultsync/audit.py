"""Who read which secret, who was refused: a streaming parser and aggregator for Vault/OpenBao audit logs.

Pure: lines in (with their line numbers), counts out. No file, network or clock access here
(vaultsync/audit_source.py reads files; the window's start is passed in).

Each request is logged twice by the server (a ``request`` entry, then a ``response`` entry carrying the
outcome); only responses are counted, so one operation is one count. HMAC'd strings stay as logged:
nothing here ever asks the server to unhash them. Memory is bounded: at most ``max_keys`` (identity,
path) pairs and ``max_anomaly_lines`` line numbers per kind of anomaly are kept; the rest are counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: What one response counts as.
READ, WRITE, LOGIN, LOGIN_FAILED, TOKEN_RENEWAL, LEASE_RENEWAL, TOKEN_CREATED, DENIED, OTHER = (
    "reads", "writes", "logins", "failed_logins", "token_renewals", "lease_renewals", "tokens_created", "denied", "other")
COUNTERS = (READ, WRITE, LOGIN, LOGIN_FAILED, TOKEN_RENEWAL, LEASE_RENEWAL, TOKEN_CREATED, DENIED, OTHER)

#: Anomalies: reported with line numbers and skipped, never fatal.
NOT_JSON, TRUNCATED, UNKNOWN_TYPE, UNKNOWN_OPERATION, NO_TIME, OVERSIZED, ROTATED = (
    "not_json", "truncated", "unknown_type", "unknown_operation", "no_time", "oversized", "rotated")

KNOWN_OPERATIONS = frozenset({
    "create", "read", "update", "delete", "list", "patch", "help", "alias-lookahead", "resolve-role", "header",
    "revoke", "renew", "rollback", "periodic",
})
_WRITE_OPS = frozenset({"create", "update", "delete", "patch"})
_READ_OPS = frozenset({"read", "list"})
_LOGIN = re.compile(r"^auth/[^/]+(?:/[^/]+)*/login(?:/|$)")
_TOKEN_MOUNT_RENEW = re.compile(r"^auth/token/renew(?:-self|-accessor)?(?:/|$)")
_TOKEN_CREATE = re.compile(r"^auth/token/create(?:-orphan)?(?:/|$)")
_LEASE_RENEW = re.compile(r"^sys/(?:leases/)?renew(?:/|$)")
UNKNOWN_PREFIX = "unknown:"
# sys/ and identity/ are logged as mounts of class "secret" too; they hold no application secrets.
_NOT_SECRETS = frozenset({"system", "identity", "token"})


@dataclass(frozen=True)
class Identities:
    """Maps what the log says about a token to a service name from the config.

    ``roles``: AppRole role name -> service (`policies apply` names each service's role after it);
    ``display_names``: a token's display name (``token-<name>`` as the server logs it) -> service.
    Anything else is reported as ``unknown:<display name>[/<role name>]``, never dropped.
    """

    roles: Mapping[str, str] = field(default_factory=dict)
    display_names: Mapping[str, str] = field(default_factory=dict)

    def name(self, auth: Mapping[str, Any] | None) -> str:
        auth = auth or {}
        role = (auth.get("metadata") or {}).get("role_name")
        if isinstance(role, str) and role in self.roles:
            return self.roles[role]
        display = auth.get("display_name")
        if isinstance(display, str):
            bare = display[len("token-"):] if display.startswith("token-") else display
            for candidate in (display, bare):
                if candidate in self.display_names:
                    return self.display_names[candidate]
        label = display if isinstance(display, str) and display else "anonymous"
        return f"{UNKNOWN_PREFIX}{label}{'/' + role if isinstance(role, str) and role else ''}"


def identities_from_settings(settings: Any) -> Identities:
    """Services by AppRole role name and token display name; the daemon's own role by its name."""
    roles = {name: name for name in settings.services}
    if getattr(settings.auth, "role_name", None):
        roles.setdefault(settings.auth.role_name, settings.auth.role_name)
    return Identities(roles=roles, display_names={name: name for name in settings.services})


@dataclass(frozen=True)
class Event:
    """One counted operation: who, on which path (as logged), what it counted as, when."""

    identity: str
    path: str
    kind: str
    mount_type: str
    operation: str
    time: str


def classify(entry: Mapping[str, Any], identities: Identities) -> Event | None:
    """The counted meaning of one parsed ``response`` entry (``None`` for a request entry)."""
    if entry.get("type") != "response":
        return None
    req = entry.get("request") or {}
    path, op = str(req.get("path") or ""), str(req.get("operation") or "")
    error = entry.get("error") or ""
    resp_auth = (entry.get("response") or {}).get("auth")
    # A login's own request carries no token; the identity is the one it obtained.
    auth = resp_auth if _LOGIN.match(path) and resp_auth else entry.get("auth")
    secret_mount = req.get("mount_class") == "secret" and req.get("mount_type") not in _NOT_SECRETS
    kind = _kind(path, op, secret_mount, error, entry)
    return Event(identities.name(auth), _report_path(path), kind, str(req.get("mount_type") or ""), op,
                 str(entry.get("time") or ""))


_LEASE_ID_IN_PATH = re.compile(r"^(sys/(?:leases/)?(?:renew|revoke|lookup))/.+")


def _report_path(path: str) -> str:
    """``sys/leases/renew/<lease id>`` is reported as ``sys/leases/renew``: the path form carries the
    lease id in clear (the server HMACs bodies, not paths), and one row per lease would be unbounded."""
    m = _LEASE_ID_IN_PATH.match(path)
    return m.group(1) if m else path


def _kind(path: str, op: str, secret_mount: bool, error: str, entry: Mapping[str, Any]) -> str:
    if "permission denied" in error or (entry.get("auth") or {}).get("policy_results", {}).get("allowed") is False:
        return DENIED
    if _LOGIN.match(path):
        return LOGIN if not error and (entry.get("response") or {}).get("auth") else LOGIN_FAILED
    if error:
        return OTHER
    if _TOKEN_MOUNT_RENEW.match(path):
        return TOKEN_RENEWAL
    if _LEASE_RENEW.match(path):
        return LEASE_RENEWAL
    if _TOKEN_CREATE.match(path):
        return TOKEN_CREATED
    if secret_mount and op in _READ_OPS:
        return READ
    if secret_mount and op in _WRITE_OPS:
        return WRITE
    return OTHER


def cutoff_string(since: datetime) -> str:
    """The window's start as the server writes times (UTC, RFC 3339), second precision."""
    return since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def in_window(time_text: str, cutoff: str | None) -> bool:
    if cutoff is None:
        return True
    # The server logs UTC with a Z: the first 19 characters compare as times.
    if time_text.endswith("Z") and len(time_text) >= 19:
        return time_text[:19] >= cutoff
    try:
        return cutoff_string(datetime.fromisoformat(time_text)) >= cutoff
    except ValueError:
        return True


@dataclass
class Anomalies:
    """Lines that were skipped, by kind: how many, and the first few line numbers."""

    max_lines: int = 20
    counts: dict[str, int] = field(default_factory=dict)
    lines: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        kept = self.lines.setdefault(kind, [])
        if len(kept) < self.max_lines:
            kept.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


OTHER_PATHS = "(other paths)"


@dataclass
class Report:
    """Counts per identity and per (identity, path); bounded by ``max_keys`` pairs."""

    max_keys: int = 100_000
    by_identity: dict[str, dict[str, int]] = field(default_factory=dict)
    by_path: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    anomalies: Anomalies = field(default_factory=Anomalies)
    lines: int = 0
    counted: int = 0
    outside_window: int = 0
    first_time: str | None = None
    last_time: str | None = None

    def add(self, event: Event) -> None:
        self.counted += 1
        _bump(self.by_identity.setdefault(event.identity, {}), event.kind)
        key = (event.identity, event.path)
        if key not in self.by_path and len(self.by_path) >= self.max_keys:
            key = (event.identity, OTHER_PATHS)
        _bump(self.by_path.setdefault(key, {}), event.kind)
        if self.first_time is None or event.time < self.first_time:
            self.first_time = event.time
        if self.last_time is None or event.time > self.last_time:
            self.last_time = event.time


def _bump(counts: dict[str, int], kind: str) -> None:
    counts[kind] = counts.get(kind, 0) + 1


def parse_line(raw: bytes | str) -> Mapping[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def check(entry: Mapping[str, Any]) -> str | None:
    """Which anomaly makes this entry uncountable, if any."""
    if entry.get("type") not in ("request", "response"):
        return UNKNOWN_TYPE
    if not isinstance(entry.get("time"), str):
        return NO_TIME
    op = (entry.get("request") or {}).get("operation")
    if op not in KNOWN_OPERATIONS:
        return UNKNOWN_OPERATION
    return None


class Aggregator:
    """Feed it lines; it keeps a :class:`Report`. ``where`` is how a line is named in anomalies (file:line)."""

    def __init__(self, identities: Identities, *, cutoff: str | None = None, max_keys: int = 100_000,
                 on_event: Any = None) -> None:
        self.identities, self.cutoff, self.on_event = identities, cutoff, on_event
        self.report = Report(max_keys=max_keys)

    def feed(self, raw: bytes | str, where: str, *, complete: bool = True) -> None:
        """One line without its newline; ``complete=False``: the file ended without one (cut off)."""
        self.report.lines += 1
        if not raw.strip():
            return
        entry = parse_line(raw)
        if entry is None:
            self.report.anomalies.add(NOT_JSON if complete else TRUNCATED, where)
            return
        problem = check(entry)
        if problem:
            self.report.anomalies.add(problem, where)
            return
        event = classify(entry, self.identities)
        if event is None:
            return
        if not in_window(event.time, self.cutoff):
            self.report.outside_window += 1
            return
        self.report.add(event)
        if self.on_event is not None:
            self.on_event(event)

    def note(self, kind: str, where: str) -> None:
        """An anomaly the reader saw (oversized line, rotated file)."""
        self.report.anomalies.add(kind, where)


# --- output ---------------------------------------------------------------------------------------


def as_dict(report: Report, *, window_start: str | None) -> dict[str, Any]:
    def counts(c: Mapping[str, int]) -> dict[str, int]:
        return {k: c.get(k, 0) for k in COUNTERS}

    return {
        "window": {"since": window_start, "first": report.first_time, "last": report.last_time},
        "services": {name: counts(c) for name, c in sorted(report.by_identity.items())},
        "paths": [{"service": ident, "path": path, **counts(c)} for (ident, path), c in sorted(report.by_path.items())],
        "lines": report.lines,
        "counted": report.counted,
        "outside_window": report.outside_window,
        "skipped": {kind: {"count": n, "lines": report.anomalies.lines.get(kind, [])}
                    for kind, n in sorted(report.anomalies.counts.items())},
    }


_COLUMNS = ((READ, "reads"), (WRITE, "writes"), (LEASE_RENEWAL, "lease-renew"), (TOKEN_RENEWAL, "token-renew"),
            (LOGIN, "logins"), (LOGIN_FAILED, "login-fail"), (TOKEN_CREATED, "tokens"), (DENIED, "denied"))


def as_text(report: Report, *, window_start: str | None) -> str:
    out = [f"Audit entries since {window_start or 'the start of the log'}: {report.counted} operations "
           f"({report.lines} lines read)."]
    out += _table("service", [(name, c) for name, c in sorted(report.by_identity.items())])
    pairs = [(ident, path, c) for (ident, path), c in sorted(report.by_path.items())
             if any(c.get(k) for k in (READ, WRITE, LEASE_RENEWAL, DENIED))]
    ident_width = max([len("service")] + [len(ident) for ident, _, _ in pairs])
    rows = [(f"{ident:<{ident_width}}  {path}", c) for ident, path, c in pairs]
    if rows:
        out.append("")
        out += _table(f"{'service':<{ident_width}}  path", rows)
    for kind, n in sorted(report.anomalies.counts.items()):
        shown = ", ".join(report.anomalies.lines.get(kind, []))
        more = "" if n <= len(report.anomalies.lines.get(kind, [])) else f" (first {len(report.anomalies.lines[kind])})"
        out.append(f"skipped {n} {kind.replace('_', ' ')} line(s): {shown}{more}")
    return "\n".join(out)


def _table(title: str, rows: Iterable[tuple[str, Mapping[str, int]]]) -> list[str]:
    rows = list(rows)
    width = max([len(title)] + [len(name) for name, _ in rows])
    head = f"{title:<{width}}" + "".join(f" {label:>11}" for _, label in _COLUMNS)
    lines = [head]
    for name, c in rows:
        lines.append(f"{name:<{width}}" + "".join(f" {c.get(k, 0):>11}" for k, _ in _COLUMNS))
    return lines
