"""``vaultsync migrate``: plan a diff against Vault, then apply it with check-and-set.

Planning reads every target secret once and records the version it saw. Applying
writes only secrets whose content changes, each with ``cas`` set to that version
(KV v2), so a concurrent writer makes the write fail instead of being overwritten.
A second run on unchanged files makes zero writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultsync import envfile
from vaultsync.config import SourceSpec
from vaultsync.errors import BadInput, Conflict, OutcomeUnknown, Unreachable, VaultsyncError
from vaultsync.migrate_notes import explain
from vaultsync.vault import KV, Secret, normalize_path

ADDED, CHANGED, UNCHANGED, ONLY_IN_VAULT, REMOVED = "added", "changed", "unchanged", "only_in_vault", "removed"


@dataclass(frozen=True)
class Target:
    """One KV secret built from one or more .env files."""

    path: str
    data: Mapping[str, str] = field(repr=False)
    origins: Mapping[str, str]  # key -> "file:line", for messages


@dataclass(frozen=True)
class KeyChange:
    key: str
    status: str
    old: str | None = None  # fingerprints, never values
    new: str | None = None
    kept_because: str = ""  # why --prune keeps a key only in Vault (the daemon rotates it)


@dataclass(frozen=True)
class SecretPlan:
    target: Target
    current: Secret
    changes: tuple[KeyChange, ...]
    desired: Mapping[str, Any] = field(repr=False)

    @property
    def needs_write(self) -> bool:
        return any(c.status in (ADDED, CHANGED, REMOVED) for c in self.changes)

    def count(self, status: str) -> int:
        return sum(1 for c in self.changes if c.status == status)


@dataclass(frozen=True)
class Plan:
    mount: str
    kv_version: int
    secrets: tuple[SecretPlan, ...]
    prune: bool

    @property
    def writes(self) -> list[SecretPlan]:
        return [s for s in self.secrets if s.needs_write]


@dataclass
class Outcome:
    """What became of each planned write. ``unknown``: sent, but no answer came (timeout,
    dropped connection): it may have landed; a re-run converges. ``abandoned``: never sent,
    because the deadline passed or the server stopped answering (``abandon_reason``)."""

    written: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): refused, not written
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    abandoned: list[str] = field(default_factory=list)
    abandon_reason: str | None = None

    @property
    def not_written(self) -> list[str]:
        return sorted([p for p, _ in self.failed] + self.conflicts + self.abandoned)

    @property
    def exit_code(self) -> int:
        """1 when anything failed, is unknown or was abandoned (it needs a re-run or a person),
        else 3 on conflicts (re-run), else 0."""
        if self.failed or self.unknown or self.abandoned:
            return 1
        return Conflict.exit_code if self.conflicts else 0


def why_not_start(now: float, deadline: float | None, server_answering: bool) -> str | None:
    """Whether to send one more write: None to go ahead, else why not."""
    if deadline is not None and now >= deadline:
        return "deadline reached"
    if not server_answering:
        return "the server stopped answering"
    return None


# --- building targets --------------------------------------------------------------


def service_for(file: str) -> str:
    """The default service: the folder the file lives in."""
    return Path(os.path.abspath(file)).parent.name or "default"


def build_targets(
    sources: Sequence[SourceSpec], *, prefix: str, strict: bool = False, interpolate: bool = False,
    interpolate_env: Sequence[str] = (), max_secret_bytes: int = 512 * 1024, warn: Callable[[str], None] = lambda _m: None,
) -> list[Target]:
    """Parse every source and group keys into secrets. Raises BadInput before any write."""
    grouped: dict[str, dict[str, str]] = {}
    origins: dict[str, dict[str, str]] = {}
    # A lower bound of each secret's JSON size, kept as entries come, so an oversized file
    # fails once one secret passes the limit instead of after all of it sits in memory.
    least_bytes: dict[str, int] = {}
    for spec in sources:
        duplicates: list[tuple[str, int, int]] = []
        entries = envfile.read_entries(spec.file, strict=strict, interpolate=interpolate,
                                       interpolate_env=interpolate_env, duplicates=duplicates)
        base = spec.path or "/".join(p for p in (prefix, spec.service or service_for(spec.file)) if p)
        # Longest split prefix first, so "DB_RO_" beats "DB_".
        splits = sorted(spec.split.items(), key=lambda kv: len(kv[0]), reverse=True)
        for entry in entries:
            path, key = base, entry.key
            for key_prefix, split_path in splits:
                if key.startswith(key_prefix):
                    path = split_path if "/" in split_path else "/".join(p for p in (prefix, split_path) if p)
                    if spec.strip_prefix:
                        key = key[len(key_prefix):]
                        if not key:
                            raise BadInput(f"{spec.file}:{entry.line}: key {entry.key} is empty once {key_prefix} is stripped")
                    break
            where = f"{spec.file}:{entry.line}"
            previous = origins.setdefault(path, {}).get(key)
            if previous and not previous.startswith(f"{spec.file}:"):
                raise BadInput(f"{where}: {key} for {path} is also set at {previous}")
            data = grouped.setdefault(path, {})
            least_bytes[path] = least_bytes.get(path, 0) + _least_json_bytes(key, entry.value) - (
                _least_json_bytes(key, data[key]) if key in data else 0)
            if least_bytes[path] > max_secret_bytes:
                raise BadInput(
                    f"secret {path} would be over the {max_secret_bytes}-byte limit from {where} on "
                    "(KV storage refuses large entries); split it with [migrate.sources] split = {...}"
                )
            data[key] = entry.value
            origins[path][key] = where
        for key, first, later in duplicates:
            warn(f"{spec.file}:{later}: duplicate key {key} (first on line {first}); the last one wins")
    targets = [Target(path, grouped[path], origins[path]) for path in sorted(grouped)]
    normalized = [normalize_path(t.path) for t in targets]
    if len(set(normalized)) != len(normalized):
        raise BadInput("two sources map to the same secret path once '/' are normalized; give them distinct paths")
    targets = [Target(n, t.data, t.origins) for n, t in zip(normalized, targets)]
    for t in targets:
        size = len(json.dumps(dict(t.data)).encode())
        if size > max_secret_bytes:
            raise BadInput(
                f"secret {t.path} would be {size} bytes, over the {max_secret_bytes}-byte limit "
                "(KV storage refuses large entries); split it with [migrate.sources] split = {...}"
            )
    return targets


def _least_json_bytes(key: str, value: str) -> int:
    """What one pair adds to a secret's JSON at least: ``"key": "value"`` with nothing escaped
    (a character is at least one byte)."""
    return len(key) + len(value) + 6


def style_warnings(targets: Iterable[Target]) -> list[str]:
    """One line per (secret, style) naming the keys that style cannot carry, and why, so
    nobody learns it at render time. Names keys and file:line, never values."""
    from vaultsync.formats import refusals

    lines = []
    for t in targets:
        for style, keys in refusals(t.data).items():
            reasons: dict[str, list[str]] = {}
            for key, why in keys.items():
                reasons.setdefault(why, []).append(f"{key} ({t.origins.get(key, '?')})")
            for why, where in reasons.items():
                shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
                lines.append(f"{t.path}: the {style} style cannot carry {shown}: {why}")
    return lines


# --- planning -----------------------------------------------------------------------


class Fingerprinter:
    """Short keyed hash (BLAKE2b MAC) of a value: equal values look equal within
    one run, and nothing can be guessed offline since the key is new each run."""

    def __init__(self, salt: bytes | None = None) -> None:
        self._salt = salt or secrets.token_bytes(16)

    def __call__(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return hashlib.blake2b(text.encode(), key=self._salt, digest_size=4).hexdigest()


def diff(current: Mapping[str, Any] | None, wanted: Mapping[str, str], *, prune: bool, fp: Fingerprinter,
         keep: Mapping[str, str] | None = None) -> tuple[list[KeyChange], dict[str, Any]]:
    """Key-level changes and the merged data to write. ``keep``: keys --prune never removes
    (key -> why), the keys the daemon rotates."""
    if not current:  # a new secret: every key is added (the common case of a first migration)
        return [KeyChange(key, ADDED, new=fp(wanted[key])) for key in sorted(wanted)], dict(wanted)
    keep = keep or {}
    changes: list[KeyChange] = []
    for key in sorted(set(current) | set(wanted)):
        if key not in current:
            changes.append(KeyChange(key, ADDED, new=fp(wanted[key])))
        elif key not in wanted:
            kept = keep.get(key, "") if prune else ""
            changes.append(KeyChange(key, REMOVED if prune and not kept else ONLY_IN_VAULT, old=fp(current[key]), kept_because=kept))
        elif current[key] != wanted[key]:
            changes.append(KeyChange(key, CHANGED, old=fp(current[key]), new=fp(wanted[key])))
        else:
            changes.append(KeyChange(key, UNCHANGED, old=fp(current[key]), new=fp(wanted[key])))
    merged = {**{k: v for k, v in current.items() if k in keep}, **wanted} if prune else {**current, **wanted}
    return changes, merged


def plan(kv: KV, targets: Iterable[Target], *, prune: bool = False, concurrency: int = 8, fp: Fingerprinter | None = None,
         keep: Mapping[str, Mapping[str, str]] | None = None) -> Plan:
    """Read what Vault holds for each target and diff it.

    One LIST per parent folder finds which targets exist at all; those that do not
    are planned as new without a read (on KV v2 they are then written with
    ``cas=0``, which fails if someone creates them first). Without list
    permission every target is read."""
    fp = fp or Fingerprinter()
    targets = list(targets)
    existing = _existing(kv, targets)

    def planned(t: Target) -> SecretPlan:
        # Diffed in the worker, while the other workers wait on their reads.
        current = Secret(t.path, None, 0) if existing is not None and t.path not in existing else kv.read(t.path)
        changes, desired = diff(current.data, t.data, prune=prune, fp=fp, keep=(keep or {}).get(t.path))
        return SecretPlan(t, current, tuple(changes), desired)

    to_read = [t for t in targets if existing is None or t.path in existing]
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(to_read)))) as pool:
        reading = pool.map(planned, to_read)
        # Targets that do not exist need no request: planned here, while the reads are under way.
        new = {t.path: planned(t) for t in targets if existing is not None and t.path not in existing}
        read = dict(zip((t.path for t in to_read), reading))
    plans = [read[t.path] if t.path in read else new[t.path] for t in targets]
    return Plan(kv.mount, kv.version, tuple(plans), prune)


def _existing(kv: KV, targets: list[Target]) -> set[str] | None:
    """Paths among ``targets`` that exist, or None when listing is not allowed."""
    folders = {t.path.rpartition("/")[0] for t in targets}
    found: set[str] = set()
    for folder in folders:
        names = kv.list(folder)
        if names is None:
            return None
        found.update(f"{folder}/{n}" if folder else n for n in names if not n.endswith("/"))
    return found


# --- applying -------------------------------------------------------------------------


def apply(kv: KV, the_plan: Plan, *, concurrency: int = 8, progress: Callable[[SecretPlan], None] | None = None,
          deadline: float | None = None, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Write what the plan says must change, each with check-and-set (KV v2).

    KV v1 has no check-and-set: the secret is re-read just before the write and
    the write is refused when it differs from what was planned (a narrower window,
    not a guarantee).

    No write starts after ``deadline`` (a ``clock()`` instant), nor once a write got no
    answer: against a hung server each further write would wait out the whole timeout.
    Those are ``abandoned``; writes in flight end within one request timeout."""
    outcome = Outcome()
    answering = threading.Event()
    answering.set()
    lock = threading.Lock()

    def write(sp: SecretPlan) -> None:
        path = sp.target.path
        reason = why_not_start(clock(), deadline, answering.is_set())
        if reason:
            with lock:
                outcome.abandoned.append(path)
                outcome.abandon_reason = outcome.abandon_reason or reason
            if progress:
                progress(sp)
            return
        try:
            if kv.version == 2:
                kv.write(path, dict(sp.desired), cas=sp.current.version)
            else:
                if kv.read(path).data != sp.current.data:
                    raise Conflict(f"{kv.mount}/{path} changed since it was planned")
                kv.write(path, dict(sp.desired))
            outcome.written.append(path)
        except Conflict:
            outcome.conflicts.append(path)
        except OutcomeUnknown as exc:
            outcome.unknown.append((path, str(exc)))
            answering.clear()
        except Unreachable as exc:
            outcome.failed.append((path, str(exc)))
            answering.clear()
        except VaultsyncError as exc:
            outcome.failed.append((path, str(exc)))
        finally:
            if progress:
                progress(sp)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        list(pool.map(write, the_plan.writes))
    for items in (outcome.written, outcome.conflicts, outcome.failed, outcome.unknown, outcome.abandoned):
        items.sort()
    return outcome


# --- presenting -----------------------------------------------------------------------

_SIGN = {ADDED: "+", CHANGED: "~", UNCHANGED: "=", ONLY_IN_VAULT: "?", REMOVED: "-"}


def plan_as_text(p: Plan, *, verbose: bool = False) -> str:
    lines = [f"Plan for mount {p.mount!r} (KV v{p.kv_version}):"]
    for sp in p.secrets:
        state = "new secret" if not sp.current.exists else (f"version {sp.current.version}" if p.kv_version == 2 else "exists")
        summary = ", ".join(f"{sp.count(s)} {s.replace('_', ' ')}" for s in (ADDED, CHANGED, REMOVED, UNCHANGED, ONLY_IN_VAULT) if sp.count(s))
        lines.append(f"  {p.mount}/{sp.target.path} ({state}): {summary or 'empty'}{'' if sp.needs_write else ' - no write'}")
        for c in sp.changes:
            if c.status == UNCHANGED and not verbose:
                continue
            fps = {ADDED: f"{c.new}", CHANGED: f"{c.old} -> {c.new}", REMOVED: f"{c.old}", ONLY_IN_VAULT: f"{c.old} (kept; --prune removes)" if not c.kept_because else f"{c.old} (kept: {c.kept_because})", UNCHANGED: f"{c.old}"}[c.status]
            lines.append(f"    {_SIGN[c.status]} {c.key}  [{fps}]{explain(c)}")
    lines.append(f"{len(p.writes)} of {len(p.secrets)} secrets to write.")
    return "\n".join(lines)


def plan_as_dict(p: Plan) -> dict[str, Any]:
    return {
        "mount": p.mount,
        "kv_version": p.kv_version,
        "prune": p.prune,
        "secrets": [
            {
                "path": sp.target.path,
                "exists": sp.current.exists,
                "version": sp.current.version,
                "write": sp.needs_write,
                "keys": [{"key": c.key, "status": c.status, "old": c.old, "new": c.new, **({"kept_because": c.kept_because} if c.kept_because else {})} for c in sp.changes],
            }
            for sp in p.secrets
        ],
        "writes": len(p.writes),
    }
