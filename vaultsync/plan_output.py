"""Plans shown the way terraform shows them: per-item lines, one summary line
(``Plan: 3 to add, 2 to change, 1 to remove, 44 unchanged.``), a compact ``--summary`` form for
plans of hundreds of services, a versioned JSON document, and the decision whether a plan is
destructive enough to ask before applying it.

Pure functions over :class:`vaultsync.migrate.Plan` and :class:`vaultsync.policies.PolicyPlan`;
values never appear, only keys, fingerprints and the ``file:line`` each key came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from vaultsync import migrate as m
from vaultsync import policies as pol

#: Bumped when a field changes meaning or goes away (new fields keep the version).
FORMAT_VERSION = "1.0"


@dataclass(frozen=True)
class Counts:
    add: int = 0
    change: int = 0
    remove: int = 0
    unchanged: int = 0
    kept: int = 0  # only in Vault, left alone (no --prune)

    @property
    def pending(self) -> bool:
        return bool(self.add or self.change or self.remove)

    def as_dict(self) -> dict[str, int]:
        return {"add": self.add, "change": self.change, "remove": self.remove, "unchanged": self.unchanged,
                "only_in_vault": self.kept}


def summary_line(c: Counts, unit: str = "") -> str:
    if not c.pending:
        return f"No changes. {c.unchanged} unchanged{unit}." if c.unchanged else "No changes."
    return f"Plan: {c.add} to add, {c.change} to change, {c.remove} to remove, {c.unchanged} unchanged{unit}."


# --- migrate ---------------------------------------------------------------------------


def migrate_counts(p: m.Plan) -> Counts:
    """Key-level counts: a key is what a person reads in a .env file."""
    by = {s: sum(sp.count(s) for sp in p.secrets) for s in (m.ADDED, m.CHANGED, m.REMOVED, m.UNCHANGED, m.ONLY_IN_VAULT)}
    return Counts(by[m.ADDED], by[m.CHANGED], by[m.REMOVED], by[m.UNCHANGED], by[m.ONLY_IN_VAULT])


def migrate_summary(p: m.Plan) -> str:
    return f"{summary_line(migrate_counts(p), ' keys')} {len(p.writes)} of {len(p.secrets)} secrets to write."


def migrate_text(p: m.Plan, *, verbose: bool = False, summary_only: bool = False) -> str:
    """The full plan (every changed key), or with ``summary_only`` one line per secret to write."""
    if summary_only:
        lines = [f"Plan for mount {p.mount!r} (KV v{p.kv_version}), secrets to write:"]
        for sp in p.writes:
            counts = " ".join(f"{sign}{sp.count(s)}" for s, sign in ((m.ADDED, "+"), (m.CHANGED, "~"), (m.REMOVED, "-"))
                               if sp.count(s))
            lines.append(f"  {p.mount}/{sp.target.path}: {counts}")
        lines.append(migrate_summary(p))
        return "\n".join(lines)
    # As terraform: secrets with nothing to write are counted in the summary, listed only with -v.
    shown = p if verbose else dataclasses.replace(p, secrets=tuple(sp for sp in p.secrets if sp.needs_write))
    body = m.plan_as_text(shown, verbose=verbose).rsplit("\n", 1)[0]  # its last line is superseded by the summary
    hidden = len(p.secrets) - len(shown.secrets)
    note = f"\n  ({hidden} secrets with nothing to write not shown; -v lists them)" if hidden else ""
    return f"{body}{note}\n{migrate_summary(p)}"


def migrate_dict(p: m.Plan) -> dict[str, Any]:
    """:func:`vaultsync.migrate.plan_as_dict` plus ``format_version``, counts, and where each key
    comes from (``source``: ``file:line``) and each secret's source files."""
    doc = m.plan_as_dict(p)
    for entry, sp in zip(doc["secrets"], p.secrets):
        origins = sp.target.origins
        entry["sources"] = sorted({where.rsplit(":", 1)[0] for where in origins.values()})
        for key in entry["keys"]:
            key["source"] = origins.get(key["key"])
    return {"format_version": FORMAT_VERSION, **doc, "summary": migrate_counts(p).as_dict()}


def migrate_is_destructive(p: m.Plan) -> bool:
    """Whether applying would overwrite or remove a value someone may still need."""
    return any(sp.count(m.CHANGED) or sp.count(m.REMOVED) for sp in p.writes)


# --- policies ----------------------------------------------------------------------------


def policy_counts(p: pol.PolicyPlan) -> Counts:
    items = [c.status for c in p.policies] + [r.status for r in p.roles]
    return Counts(items.count(pol.ADDED), items.count(pol.CHANGED), items.count(pol.REMOVED), items.count(pol.UNCHANGED),
                  items.count(pol.ONLY_IN_VAULT))


def policy_text(p: pol.PolicyPlan) -> str:
    return f"{pol.plan_as_text(p)}\n{summary_line(policy_counts(p), ' (policies and AppRoles)')}"


def policy_dict(p: pol.PolicyPlan) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **pol.plan_as_dict(p), "summary": policy_counts(p).as_dict()}


def policy_is_destructive(p: pol.PolicyPlan) -> bool:
    return any(c.status in (pol.CHANGED, pol.REMOVED) for c in p.policies) or any(r.status == pol.CHANGED for r in p.roles)


# --- asking before a destructive apply ----------------------------------------------------------


def confirm(question: str, *, read: Callable[[str], str], out: TextIO) -> bool:
    """terraform's rule: only ``yes`` approves; anything else (or end of input) cancels."""
    out.write(f"\n{question}\n  Only 'yes' will be accepted to approve.\n\n")
    out.flush()
    try:
        answer = read("  Enter a value: ")
    except EOFError:
        return False
    return answer.strip() == "yes"


def exit_code_for_dry_run(pending: bool, detailed: bool) -> int:
    """``--detailed-exitcode``: 0 no changes, 2 changes pending (1 stays "error")."""
    return 2 if detailed and pending else 0


_COLOURS = {"+": "green", "~": "yellow", "-": "red", "?": "cyan"}


def colourize(text: str) -> str:
    """terraform's colours for a terminal: + green, ~ yellow, - red, ? cyan (the sign and key)."""
    import click

    out = []
    for line in text.split("\n"):
        body = line.lstrip(" ")
        sign = body[:2]
        if len(sign) == 2 and sign[1] == " " and sign[0] in _COLOURS:
            line = line[: len(line) - len(body)] + click.style(body, fg=_COLOURS[sign[0]])
        elif body.startswith("Plan: "):
            line = click.style(line, bold=True)
        out.append(line)
    return "\n".join(out)
