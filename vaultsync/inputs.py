"""What ``vaultsync migrate`` accepts on its command line, turned into :class:`SourceSpec` s:

* ``api/.env``: one file, its service is its folder's name (or ``--service``);
* ``api/.env.prod:api``: a file and the service it belongs to;
* ``services/``: every ``.env`` file below the folder, each its folder's service;
* ``'services/*/.env'``: a glob (for shells that did not expand it, and for Windows habits);
* ``-``: standard input, with ``--service`` (or ``--path``).

Mistakes are caught here, before anything is read from the server: a missing file (named, with
no line number: there is no line yet), a folder or glob that matches nothing, and two files that
would silently merge into one service because they share a folder.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from vaultsync.config import SourceSpec
from vaultsync.errors import BadInput

STDIN = "-"
#: What ``-`` is read through: a path, so the parser reads it like any file (pipes included).
STDIN_PATH = "/dev/stdin"
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def expand(args: Sequence[str], *, service: str | None = None, secret_path: str | None = None) -> list[SourceSpec]:
    """Command-line arguments -> sources, in the order given (a folder's files sorted)."""
    specs: list[SourceSpec] = []
    defaulted: dict[str, list[str]] = {}  # service -> files that got it from their folder name
    if sum(a == STDIN for a in args) > 1:
        raise BadInput("'-' (standard input) can be given once")
    for arg in args:
        for file, explicit in _files(arg):
            if file == STDIN_PATH and not (explicit or service or secret_path):
                raise BadInput("'-' (standard input) has no folder to name its service: add --service NAME (or --path)")
            svc = explicit or service
            specs.append(SourceSpec(file=file, service=svc, path=secret_path))
            if svc is None and secret_path is None:
                defaulted.setdefault(service_of(file), []).append(file)
    for svc, files in defaulted.items():
        if len(files) > 1:
            raise BadInput(
                f"{' and '.join(files[:3])}{' ...' if len(files) > 3 else ''} would all go to service {svc!r} (their folder): "
                f"name one with FILE:SERVICE (e.g. {files[1]}:{svc}-local), or pass --service to merge them on purpose"
            )
    return specs


def service_of(file: str) -> str:
    from vaultsync.migrate import service_for

    return service_for(file)


def _files(arg: str) -> Iterable[tuple[str, str | None]]:
    if arg == STDIN:
        yield STDIN_PATH, None
        return
    if os.path.isdir(arg):
        found = sorted(str(p) for p in Path(arg).rglob(".env") if p.is_file())
        if not found:
            raise BadInput(f"{arg}: no .env file in this folder or below it")
        yield from ((f, None) for f in found)
        return
    if os.path.lexists(arg):
        yield _existing_file(arg), None
        return
    file, sep, svc = arg.rpartition(":")
    if sep and file and _SERVICE.match(svc):
        if file == STDIN:
            yield STDIN_PATH, svc
            return
        for f, _ in _files(file):
            yield f, svc
        return
    if _GLOB_CHARS.search(arg):
        matched = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
        if not matched:
            raise BadInput(f"{arg}: no file matches this pattern")
        yield from ((f, None) for f in matched)
        return
    raise BadInput(f"{arg}: no such file")


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise BadInput(f"{path}: not a regular file")
    return path


def check_readable(specs: Iterable[SourceSpec]) -> None:
    """Sources from the config: a missing file is named without a line number."""
    for spec in specs:
        if spec.file != STDIN_PATH and not os.path.lexists(spec.file):
            raise BadInput(f"{spec.file}: no such file")


def files_without_keys(specs: Iterable[SourceSpec], origins: Iterable[str]) -> list[str]:
    """Files that contributed no key at all (empty, or only comments): worth a warning, since the
    user expected something from them. ``origins`` are the targets' ``file:line`` strings."""
    used = {where.rsplit(":", 1)[0] for where in origins}
    return [display(s.file) for s in specs if s.file not in used]


def display(file: str) -> str:
    return "standard input" if file == STDIN_PATH else file
