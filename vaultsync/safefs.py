"""Folders that hold secrets: opened one component at a time, never through someone else's hands.

A root daemon that writes ``/srv/app/.env`` must not let another local user decide where that
write lands or who can read it. :func:`open_folder` walks the path from ``/`` with
``openat(O_DIRECTORY | O_NOFOLLOW)`` on each component and checks, as OpenSSH does for its key
files (``auth.c: safe_path``), that every folder on the way is owned by root, by the daemon's
user or by the file's configured owner, and is not writable by group or others (a sticky
folder such as ``/tmp`` may be crossed, never written into). A symlink on the way is followed
only when its owner is trusted the same way (``/var/run -> /run`` is root's); one owned by
anyone else is refused. Callers then create, rename and link *relative to the returned
descriptor*, so nothing can swap a folder between the check and the write.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import stat
from collections import deque

from vaultsync.errors import VaultsyncError

__all__ = ["UnsafePath", "open_folder", "default_owner", "resolve_owner", "read_trusted_file", "check_trusted_program",
           "read_trusted_text"]

_MAX_SYMLINKS = 40  # as the kernel's own limit
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(VaultsyncError):
    """A folder on the way to a secret file is controlled by someone else, or is not a folder."""


def default_owner() -> tuple[int, int]:
    """Files and folders vaultsync creates belong to the user it runs as, unless configured."""
    return os.geteuid(), os.getegid()


def resolve_owner(owner: str | int | None, group: str | int | None) -> tuple[int, int]:
    """``owner``/``group`` from the config (names or numeric ids) as ``(uid, gid)``; a missing
    one is the daemon's own. Never taken from a file that happens to be there."""
    uid, gid = default_owner()
    if owner not in (None, ""):
        uid = _lookup(owner, pwd.getpwnam, "pw_uid", "user")
    if group not in (None, ""):
        gid = _lookup(group, grp.getgrnam, "gr_gid", "group")
    return uid, gid


def _lookup(name: str | int, by_name, attr: str, what: str) -> int:  # type: ignore[no-untyped-def]
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    try:
        return int(getattr(by_name(str(name)), attr))
    except KeyError:
        raise UnsafePath(f"unknown {what} {name!r}") from None


def _check(st: os.stat_result, shown: str, *, final: bool, trusted: set[int]) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{shown} is not a folder")
    if st.st_uid not in trusted:
        raise UnsafePath(f"folder {shown} belongs to uid {st.st_uid}, not to root or to the user secrets are written "
                         "for; refusing to write secrets through it")
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and (final or not st.st_mode & stat.S_ISVTX):
        raise UnsafePath(f"folder {shown} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                         "refusing to write secrets into or through it")


def open_folder(path: str | os.PathLike[str], *, owner: tuple[int, int], create: bool = False) -> int:
    """Open ``path`` (a folder) safely and return its descriptor; the caller closes it.

    ``owner`` is the ``(uid, gid)`` the secret is for: it is trusted along with root and the
    daemon's user, and owns the folders that ``create`` makes (mode 0700). Raises
    :class:`UnsafePath` for a folder others can write, an untrusted symlink or a non-folder,
    ``FileNotFoundError`` for a missing folder when not creating.
    """
    trusted = {0, os.geteuid(), owner[0]}
    parts = deque(os.fspath(os.path.abspath(path)).split("/"))
    stack: list[tuple[int, str]] = [(os.open("/", _DIR_FLAGS), "/")]
    links = 0
    try:
        _check(os.fstat(stack[0][0]), "/", final=not any(parts), trusted=trusted)
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            parent, shown_parent = stack[-1]
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            shown = os.path.join(shown_parent, name)
            try:
                fd = _open_or_create(parent, name, owner if create else None)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _trusted_link(parent, name, shown, trusted)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise UnsafePath(f"{os.fspath(path)}: too many symlinks") from None
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                parts.extendleft(reversed(target.split("/")))
                continue
            stack.append((fd, shown))
            _check(os.fstat(fd), shown, final=not any(p not in ("", ".") for p in parts), trusted=trusted)
        fd = stack.pop()[0]
        return fd
    finally:
        for fd, _ in stack:
            os.close(fd)


def _open_or_create(parent: int, name: str, owner: tuple[int, int] | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if owner is None:
            raise
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)  # someone made it meanwhile: checked like any other
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != owner:
        os.fchown(fd, *owner)  # the service the file is for can reach its folder
    os.fchmod(fd, 0o700)  # mkdir's mode went through the umask
    return fd


def _trusted_link(parent: int, name: str, shown: str, trusted: set[int]) -> str:
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{shown} is not a folder")
    if st.st_uid not in trusted:
        raise UnsafePath(f"{shown} is a symlink owned by uid {st.st_uid}; refusing to follow it to write secrets")
    return os.readlink(name, dir_fd=parent)


def read_trusted_file(path: str | os.PathLike[str], *, limit: int = 1 << 16, _links: int = 0) -> bytes:
    """Read a small file that decides who vaultsync is (role_id, secret_id): through trusted
    folders, a symlink only if root or vaultsync's user owns it, the file owned by root or
    vaultsync's user and writable by no one else; whoever could replace it could make the
    daemon log in as a role of their choosing."""
    shown = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(shown))
    folder = open_folder(parent, owner=default_owner())
    try:
        fd = os.open(os.path.basename(shown), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError as exc:
        if exc.errno != errno.ELOOP or _links >= _MAX_SYMLINKS:
            raise
        target = _trusted_link(folder, os.path.basename(shown), shown, {0, os.geteuid()})
        return read_trusted_file(os.path.join(parent, target), limit=limit, _links=_links + 1)
    finally:
        os.close(folder)
    try:
        check_trusted_file(fd, shown)
        return os.read(fd, limit)
    finally:
        os.close(fd)


def check_trusted_file(fd: int, shown: str) -> os.stat_result:
    """The open file's stat, if it is a regular file owned by root or vaultsync's user and
    writable by no one else; otherwise UnsafePath naming ``shown``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{shown} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePath(f"{shown} belongs to uid {st.st_uid}, not to root or to vaultsync's user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"{shown} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})")
    return st


def check_trusted_program(program: str, search_path: str, *, _links: int = 0) -> None:
    """A hook program runs as vaultsync's user (often root): whoever can replace it runs code as
    that user. Refused (UnsafePath) unless it, every symlink to it and every folder on the way
    are owned by root or vaultsync's user and writable by no one else, as for pid files. A name
    without a slash is looked up on ``search_path`` (the hooks' PATH); a program that is not
    found is left to the run, which reports it."""
    found = program if "/" in program else shutil.which(program, path=search_path)
    if found is None:
        return
    path = os.path.abspath(found)
    try:
        folder = open_folder(os.path.dirname(path), owner=default_owner())
    except FileNotFoundError:
        return
    except UnsafePath as exc:
        raise UnsafePath(f"hook program {path}: {exc}; refusing to run it") from None
    try:
        try:
            fd = os.open(os.path.basename(path), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:
            return
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                if _links >= _MAX_SYMLINKS:
                    raise UnsafePath(f"hook program {program}: too many symlinks")
                try:
                    target = _trusted_link(folder, os.path.basename(path), path, {0, os.geteuid()})
                except UnsafePath as exc:
                    raise UnsafePath(f"hook program {exc}; refusing to run it") from None
                check_trusted_program(os.path.join(os.path.dirname(path), target), search_path, _links=_links + 1)
                return
            try:
                check_trusted_file(fd, path)
            except UnsafePath as exc:
                raise UnsafePath(f"hook program {exc}; refusing to run it") from None
        finally:
            os.close(fd)
    finally:
        os.close(folder)


def read_trusted_text(path: str | os.PathLike[str], what: str, *, limit: int = 1 << 20) -> str:
    """A file that decides what a secret file holds (a template), read as :func:`read_trusted_file`
    does: whoever could edit it could have the secrets rendered anywhere they can read."""
    try:
        data = read_trusted_file(path, limit=limit + 1)
    except UnsafePath as exc:
        raise UnsafePath(f"{what} {exc}; refusing to use it") from None
    if len(data) > limit:
        raise UnsafePath(f"{what} {os.fspath(path)} is larger than {limit} bytes")
    return data.decode("utf-8")
