"""Strict reading of ``.env`` files with python-dotenv's own parser.

python-dotenv is lenient: a line it cannot parse is logged and skipped. A
migration must not silently drop a secret, so here every such line is an error
``file:line: reason`` (exit code 2) and nothing is written. Values are never part
of an error message.

What is accepted is exactly what python-dotenv accepts: ``export`` prefixes,
single/double quotes with their escapes, multi-line quoted values (PEM keys),
CRLF and lone-CR line ends (python-dotenv opens files in text mode, so both
become LF, inside quoted multi-line values too), a UTF-8 byte-order mark, ``#``
comments, ``=`` inside values and empty values. ``${VAR}`` is kept literally
unless interpolation is asked for; then it is resolved from the keys defined
earlier in the same file only (python-dotenv would also read the whole process
environment, where VAULT_TOKEN lives), plus names the caller allows explicitly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv.parser import Binding, Position, Reader, parse_binding
from dotenv.variables import Variable, parse_variables

from vaultsync.errors import ParseError

# Keys we accept: what shells, docker and compose can all use, plus `.` and `-`
# which compose accepts in env_file. Anything else is almost always a typo.
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_BOM = "\ufeff"

# Lines whose meaning is certain without python-dotenv's parser, read with one match each (its
# parser costs ~60 us a line, half of a migration's time): a key we accept after an optional
# `export `, `=`, and an unquoted value with no whitespace (so no inline comment to cut and
# nothing to strip) that does not start with a quote; a comment line; an empty line. Every other
# line, and the quoted value that may start there and span lines, goes to python-dotenv's parser.
_SIMPLE = re.compile(r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.\-]*)=([^\s'\"]\S*)?(?:\n|\Z)")
_COMMENT_OR_EMPTY = re.compile(r"(?:#[^\n]*)?(?:\n|\Z)")


@dataclass(frozen=True, slots=True)  # slots: a million-line file holds a million of them
class Entry:
    key: str
    value: str = field(repr=False)
    line: int


@dataclass(frozen=True)
class EnvFile:
    path: str
    entries: tuple[Entry, ...]
    duplicates: tuple[tuple[str, int, int], ...] = ()  # (key, first line, later line)

    def values(self) -> dict[str, str]:
        """Key -> value; for a key given twice the last one wins, as in python-dotenv."""
        return {e.key: e.value for e in self.entries}


def parse(
    path: str | Path, *, strict: bool = False, interpolate: bool = False, interpolate_env: Collection[str] = (),
    environ: Mapping[str, str] | None = None,
) -> EnvFile:
    """Read ``path``; raise :class:`ParseError` on anything python-dotenv would skip."""
    path = str(path)
    return parse_bytes(_read(path), path, strict=strict, interpolate=interpolate, interpolate_env=interpolate_env, environ=environ)


def parse_bytes(
    raw: bytes, path: str, *, strict: bool = False, interpolate: bool = False, interpolate_env: Collection[str] = (),
    environ: Mapping[str, str] | None = None,
) -> EnvFile:
    duplicates: list[tuple[str, int, int]] = []
    entries = tuple(_entries(_decode(raw, path), path, strict=strict, interpolate=interpolate,
                             interpolate_env=interpolate_env, environ=environ, duplicates=duplicates))
    return EnvFile(path, entries, tuple(duplicates))


def read_entries(
    path: str, *, strict: bool = False, interpolate: bool = False, interpolate_env: Collection[str] = (),
    environ: Mapping[str, str] | None = None, duplicates: list[tuple[str, int, int]] | None = None,
) -> Iterator[Entry]:
    """The entries of ``path`` one at a time, as :func:`parse` reads them: a caller that keeps
    only what it needs (or stops early) never holds them all. Without interpolation the
    errors come in line order as they are met; with it, as :func:`parse` raises them.
    ``duplicates`` (if given) receives (key, first line, later line) as they are met."""
    yield from _entries(_decode(_read(path), path), path, strict=strict, interpolate=interpolate,
                        interpolate_env=interpolate_env, environ=environ,
                        duplicates=[] if duplicates is None else duplicates)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ParseError(path, 0, f"cannot read file: {exc.strerror}") from None


def _entries(
    text: str, path: str, *, strict: bool, interpolate: bool, interpolate_env: Collection[str],
    environ: Mapping[str, str] | None, duplicates: list[tuple[str, int, int]],
) -> Iterator[Entry]:
    seen: dict[str, int] = {}

    def checked() -> Iterator[Entry]:
        for key, value, line in bindings(text, path):
            if key in seen:
                if strict:
                    raise ParseError(path, line, f"duplicate key {key} (first set on line {seen[key]})")
                duplicates.append((key, seen[key], line))
            seen[key] = line
            yield Entry(key, value, line)

    if interpolate:
        # Every line is checked before any reference is resolved: a parse error anywhere wins.
        yield from _interpolate(list(checked()), path, interpolate_env, os.environ if environ is None else environ)
    else:
        yield from checked()


def bindings(text: str, path: str) -> Iterator[tuple[str, str, int]]:
    """(key, value, line) of each assignment in ``text``, exactly as python-dotenv's
    ``parse_stream`` reads them; ParseError on the first line it would skip."""
    text = text.removeprefix(_BOM)  # as python-dotenv's reader does (a second BOM, after _decode's)
    pos, line, end = 0, 1, len(text)
    reader: Reader | None = None
    while pos < end:
        simple = _SIMPLE.match(text, pos)
        if simple:
            yield simple.group(1), simple.group(2) or "", line
            pos, line = simple.end(), line + 1
            continue
        skipped = _COMMENT_OR_EMPTY.match(text, pos)
        if skipped:
            pos, line = skipped.end(), line + 1
            continue
        if reader is None:
            reader = _reader(text)
        reader.position = Position(pos, line)
        binding = parse_binding(reader)
        pos, line = reader.position.chars, reader.position.line
        checked = _checked(binding, path)
        if checked:
            yield checked


def _reader(text: str) -> Reader:
    """python-dotenv's reader over ``text`` itself: its constructor would copy it through a
    StringIO (four bytes a character: 200 MB for a 50 MB file)."""
    reader = Reader.__new__(Reader)
    reader.string = text
    reader.position = Position.start()
    reader.mark = Position.start()
    return reader


def _checked(binding: Binding, path: str) -> tuple[str, str, int] | None:
    line = _first_content_line(binding.original.string, binding.original.line)
    if binding.error:
        raise ParseError(path, line, _why(binding.original.string))
    if binding.key is None:  # blank line or comment
        return None
    if not _KEY.match(binding.key):
        # The "key" of a mangled line may be a value pasted alone: never echo it.
        raise ParseError(path, line, "invalid key name (letters, digits, '_', '.', '-'; not starting with a digit)")
    if binding.value is None:
        raise ParseError(path, line, "not an assignment (a bare word without '='; expected KEY=value)")
    return binding.key, binding.value, line


def _interpolate(entries: list[Entry], path: str, allowed: Collection[str], environ: Mapping[str, str]) -> list[Entry]:
    """Expand ``${NAME}``/``${NAME:-default}`` as python-dotenv does (override=True: the
    file's own earlier keys win over the environment), but look names up only in the
    file's earlier keys and in the environment variables named in ``allowed``. Any other
    reference is an error naming file:line and the variable, never a value."""
    defined: dict[str, str] = {}
    out: list[Entry] = []
    for entry in entries:
        scope: dict[str, str | None] = {}
        for atom in parse_variables(entry.value):
            if not isinstance(atom, Variable) or atom.name in defined:
                continue
            if atom.name in allowed and atom.name in environ:
                scope[atom.name] = environ[atom.name]
            elif atom.name not in allowed:
                raise ParseError(path, entry.line, _unresolved(entry.key, atom.name))
        value = "".join(atom.resolve({**scope, **defined}) for atom in parse_variables(entry.value))
        defined[entry.key] = value
        out.append(Entry(entry.key, value, entry.line))
    return out


def _unresolved(key: str, name: str) -> str:
    # "${...}" may be part of a password rather than a reference: show only what is a variable name.
    if not _KEY.match(name):
        return (f"{key} holds a ${{...}} that is not a variable name (not shown); --interpolate expands every "
                "${...}: migrate without it to store the value literally")
    return (f"{key} refers to ${{{name}}}, which is not defined earlier in this file; --interpolate "
            f"reads no environment variable unless allowed with --interpolate-env {name}")


def _decode(raw: bytes, path: str) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ParseError(path, raw.count(b"\n", 0, nul) + 1, "NUL byte in file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(path, raw.count(b"\n", 0, exc.start) + 1, "invalid UTF-8") from None
    text = text[1:] if text.startswith(_BOM) else text
    # What open(path) in text mode (python-dotenv's way) does: universal newlines.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _first_content_line(original: str, line: int) -> int:
    """python-dotenv reports the line a binding's *mark* starts on, which can be a
    blank line before it; point at the first line with content instead."""
    stripped = original.lstrip()
    skipped = original[: len(original) - len(stripped)]
    return line + skipped.count("\n") + (skipped.count("\r") - skipped.count("\r\n"))


def _why(original: str) -> str:
    body = original.lstrip()
    head = body.split("=", 1)[0].strip() if "=" in body else ""
    if head.startswith("export "):
        head = head[len("export ") :].strip()
    name = head if head and _KEY.match(head) else None
    after = body.split("=", 1)[1].lstrip() if "=" in body else ""
    if after[:1] in ("'", '"'):
        quote = after[0]
        closed = re.match(rf"{quote}(?:\\.|[^{quote}\\])*{quote}", after, re.DOTALL)
        if not closed:
            kind = "single" if quote == "'" else "double"
            return f"unterminated {kind} quote in the value of {name or 'a key'}"
        return f"cannot parse the value of {name or 'a key'} (text after the closing quote?)"
    if name:
        return f"cannot parse the value of {name} (text after the value?)"
    return "not an assignment (expected KEY=value)"
