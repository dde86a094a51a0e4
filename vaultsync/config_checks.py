"""Checks on settings that a type alone cannot express (outside tester's findings 1, 2, 13, 16, 17c, 17i).

Pure functions over the raw TOML tables or the loaded dataclasses; each raises
:class:`ConfigError` naming the file and the key, never a secret. Kept apart from
``config.py`` so that the loader stays about parsing.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from vaultsync.errors import ConfigError

#: Faster polls buy nothing (a KV read per service per poll) and "1ms" made ~110 requests/s.
MIN_POLL_INTERVAL = 1.0

#: Vault policy globs: in a kv_path they widen the generated least-privilege policy to
#: other services' secrets; in a dynamic path they turn into a literal `*` in renew paths.
_GLOB_CHARS = ("*", "+")


def check_destination(item: Mapping[str, Any], dest_cls: type, src: str, where: str) -> None:
    """A destination's raw table, before it is parsed."""
    if not isinstance(item, Mapping):
        return  # the loader says it must be a table
    check_destination_keys(item, dest_cls, src, where)
    refuse_integer_mode(item, src, where)
    check_owner_ids(item.get("owner"), item.get("group"), src, where)


def refuse_integer_mode(item: Mapping[str, Any], src: str, where: str) -> None:
    """``mode = 444`` (unquoted) is the decimal 444 = 0o674: group-writable and world-readable.
    No integer is what anyone means, so every one is refused."""
    mode = item.get("mode")
    if isinstance(mode, int) and not isinstance(mode, bool):
        raise ConfigError(f"{src}: {where}.mode must be a permission like \"0600\" as a quoted octal string "
                          f"(an unquoted {mode} is read as the decimal number {mode})")


def check_destination_keys(item: Mapping[str, Any], dest_cls: type, src: str, where: str) -> None:
    """Unknown keys of a destination, with the keys a user may really write in the hint:
    ``wait = {min, max}`` rather than the internal ``wait_min``/``wait_max``."""
    allowed = ({f.name for f in fields(dest_cls)} - {"wait_min", "wait_max", "label"}) | {"wait", "name"}
    unknown = sorted(set(item) - allowed)
    if unknown:
        hint = "; a render window is wait = { min = \"2s\", max = \"10s\" }" if unknown[0].startswith("wait") else ""
        raise ConfigError(f"{src}: unknown setting {where}.{unknown[0]} (allowed: {', '.join(sorted(allowed))}{hint})")


def check_policy_paths(name: str, kv_path: str, dynamic: Mapping[str, Any], src: str) -> None:
    """A kv_path or dynamic path is also a policy path: a glob in it would grant more than one secret."""
    named = [("kv_path", kv_path)] + [(f"dynamic.{key}", path) for key, path in dynamic.items()]
    for key, path in named:
        if isinstance(path, str) and any(c in path for c in _GLOB_CHARS):
            raise ConfigError(f"{src}: services.{name}.{key} must not hold '*' or '+' (policy glob characters: "
                              "the generated policy would grant more than this one path)")


def check_poll_interval(poll_interval: float, src: str) -> None:
    if 0 < poll_interval < MIN_POLL_INTERVAL:
        raise ConfigError(f"{src}: daemon.poll_interval must be at least {MIN_POLL_INTERVAL:g}s "
                          "(each poll reads every service's secret)")


def check_owner_ids(owner: Any, group: Any, src: str, where: str) -> None:
    """A negative id means "leave unchanged" to chown, never a user: refuse it."""
    for key, value in (("owner", owner), ("group", group)):
        if not isinstance(value, bool) and isinstance(value, (int, str)) and re.fullmatch(r"\s*-\d+\s*", str(value)):
            raise ConfigError(f"{src}: {where}.{key} must be a user/group name or an id of 0 or more")


def real_destination(path: str) -> str:
    """Where ``path`` really lands: its folders (and the file, if it is a symlink) resolved, so
    that /var/run/x and /run/x, or /x/./y and /x/y, compare equal."""
    return os.path.realpath(path)


def check_one_writer(services: Mapping[str, Any], src: str, resolve: Callable[[str], str] = real_destination) -> None:
    """One file, one writer: two destinations (in one service or two) that resolve to the same
    file would flip it between their contents on every poll."""
    writers: dict[str, tuple[str, str]] = {}
    for name, svc in services.items():
        for dest in svc.destinations:
            real = resolve(dest.path)
            other = writers.setdefault(real, (name, dest.path))
            if other != (name, dest.path):
                also = "the same service" if other[0] == name else f"services.{other[0]}"
                raise ConfigError(f"{src}: services.{name}: destination {dest.path} is the same file as "
                                  f"{other[1]} of {also} (resolved: {real}); one file has one writer")


def check_for_writing(settings: Any) -> None:
    """What only the host that writes the files can check (the daemon, `vaultsync render`, a
    reload): every owner/group exists, every absolute hook command exists and is executable.
    Not part of loading: `policies apply` loads the same config on an admin's machine."""
    src = settings.source or "config"
    for name, svc in settings.services.items():
        for i, dest in enumerate(svc.destinations):
            where = f"services.{name}.destinations[{i}]"
            _check_account(dest.owner, pwd.getpwnam, src, f"{where}.owner", "user")
            _check_account(dest.group, grp.getgrnam, src, f"{where}.group", "group")
            if dest.command:
                _check_command(dest.command[0], src, f"{where}.command")


def _check_account(value: Any, by_name: Callable[[str], Any], src: str, where: str, what: str) -> None:
    if value in (None, "") or isinstance(value, int) or str(value).isdigit():
        return
    try:
        by_name(str(value))
    except KeyError:
        raise ConfigError(f"{src}: {where}: no {what} named {value!r} on this host") from None


def _check_command(program: str, src: str, where: str) -> None:
    """An absolute hook program must be there (a name is looked up on the hooks' PATH when run)."""
    if not os.path.isabs(program):
        return
    if not os.path.isfile(program):
        raise ConfigError(f"{src}: {where}: {program} does not exist (or is not a file)")
    if not os.access(program, os.X_OK):
        raise ConfigError(f"{src}: {where}: {program} is not executable")


#: [daemon] settings used once, at start: the HTTP server's address and its /status token.
START_ONLY_DAEMON_SETTINGS = ("metrics_addr", "status_token_file")


def start_only_changes(old: Any, new: Any) -> list[str]:
    """The start-only [daemon] settings that differ between two DaemonSettings (for a SIGHUP
    that cannot apply them: it says "restart needed" instead of pretending it did)."""
    return [name for name in START_ONLY_DAEMON_SETTINGS if getattr(old, name) != getattr(new, name)]
