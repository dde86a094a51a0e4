"""vaultsync.safefs in-process: each refusal of open_folder/read_trusted_file with its exact message,
symlinks (relative, absolute, loops, untrusted), folder creation, owners by name and number.
Another uid is simulated with chown to an unused uid (the tests run as root, like the daemon);
`tests/test_safe_writes.py` has the attacks by a real second user."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from vaultsync import safefs
from vaultsync.safefs import UnsafePath

STRANGER = 54321  # no such user: owns what "someone else" controls


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """A folder only root can write into (pytest's are 0700 already, but say it)."""
    os.chmod(tmp_path, 0o700)
    return tmp_path


def same_folder(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    finally:
        os.close(fd)


def me() -> tuple[int, int]:
    return os.geteuid(), os.getegid()


def test_default_and_resolved_owners():
    assert safefs.default_owner() == me()
    assert safefs.resolve_owner(None, None) == me() and safefs.resolve_owner("", "") == me()
    assert safefs.resolve_owner("root", "root") == (0, 0)
    assert safefs.resolve_owner(1234, "5678") == (1234, 5678)
    assert safefs.resolve_owner("1234", None) == (1234, os.getegid())
    assert safefs.resolve_owner(None, 99) == (os.geteuid(), 99)
    with pytest.raises(UnsafePath, match=r"^unknown user 'no-such-user-x'$"):
        safefs.resolve_owner("no-such-user-x", None)
    with pytest.raises(UnsafePath, match=r"^unknown group 'no-such-group-x'$"):
        safefs.resolve_owner(None, "no-such-group-x")


def test_open_an_existing_safe_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert same_folder(safefs.open_folder(tmp_path / "a" / "b", owner=me()), tmp_path / "a" / "b")
    assert same_folder(safefs.open_folder(str(tmp_path / "a") + "/./b/", owner=me()), tmp_path / "a" / "b")
    assert same_folder(safefs.open_folder("/", owner=me()), Path("/"))


def test_a_missing_folder_is_not_created_unless_asked(tmp_path):
    with pytest.raises(FileNotFoundError):
        safefs.open_folder(tmp_path / "x" / "y", owner=me())
    assert not (tmp_path / "x").exists()
    old = os.umask(0o077)
    try:
        fd = safefs.open_folder(tmp_path / "x" / "y", owner=(STRANGER, STRANGER), create=True)
    finally:
        os.umask(old)
    assert same_folder(fd, tmp_path / "x" / "y")
    for made in (tmp_path / "x", tmp_path / "x" / "y"):
        st = made.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (STRANGER, STRANGER, 0o700)
    # Made by us for ourselves: mode 0700 whatever the umask, owner unchanged.
    old = os.umask(0)
    try:
        os.close(safefs.open_folder(tmp_path / "mine", owner=me(), create=True))
    finally:
        os.umask(old)
    st = (tmp_path / "mine").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*me(), 0o700)


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o1777])
def test_a_folder_others_can_write_is_refused_as_the_last_one(tmp_path, mode):
    target = tmp_path / "shared"
    target.mkdir()
    os.chmod(target, mode)
    with pytest.raises(UnsafePath) as err:
        safefs.open_folder(target, owner=me())
    assert str(err.value) == (f"folder {target} is writable by other users (mode {mode:04o}); "
                              "refusing to write secrets into or through it")


def test_a_sticky_folder_may_be_crossed_not_a_plain_writable_one(tmp_path):
    (tmp_path / "sticky" / "safe").mkdir(parents=True)
    os.chmod(tmp_path / "sticky", 0o1777)
    assert same_folder(safefs.open_folder(tmp_path / "sticky" / "safe", owner=me()), tmp_path / "sticky" / "safe")
    os.chmod(tmp_path / "sticky", 0o777)
    with pytest.raises(UnsafePath, match=f"^folder {tmp_path}/sticky is writable by other users"):
        safefs.open_folder(tmp_path / "sticky" / "safe", owner=me())
    os.chmod(tmp_path / "sticky", 0o1777)
    # A trailing "." is no further component: the sticky folder is the last one, and refused.
    with pytest.raises(UnsafePath, match="is writable by other users"):
        safefs.open_folder(str(tmp_path / "sticky") + "/.", owner=me())


def test_a_folder_of_another_user_is_refused_unless_it_is_the_owners(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, STRANGER, STRANGER)
    with pytest.raises(UnsafePath) as err:
        safefs.open_folder(theirs, owner=me())
    assert str(err.value) == (f"folder {theirs} belongs to uid {STRANGER}, not to root or to the user secrets are written "
                              "for; refusing to write secrets through it")
    assert same_folder(safefs.open_folder(theirs, owner=(STRANGER, 0)), theirs)


def test_a_file_on_the_way_is_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafePath, match=f"^{tmp_path}/file is not a folder$"):
        safefs.open_folder(tmp_path / "file" / "sub", owner=me())
    with pytest.raises(UnsafePath, match=f"^{tmp_path}/file is not a folder$"):
        safefs.open_folder(tmp_path / "file", owner=me())


def test_trusted_symlinks_are_followed_relative_and_absolute(tmp_path):
    (tmp_path / "real" / "in").mkdir(parents=True)
    (tmp_path / "links").mkdir()
    os.symlink("../real/in", tmp_path / "links" / "rel")
    os.symlink(str(tmp_path / "real"), tmp_path / "links" / "abs")
    assert same_folder(safefs.open_folder(tmp_path / "links" / "rel", owner=me()), tmp_path / "real" / "in")
    assert same_folder(safefs.open_folder(tmp_path / "links" / "abs" / "in", owner=me()), tmp_path / "real" / "in")
    # ".." above "/" stays at "/", as the kernel does.
    os.symlink("../../../../../../../../../../../../..", tmp_path / "links" / "up")
    assert same_folder(safefs.open_folder(tmp_path / "links" / "up", owner=me()), Path("/"))


def test_a_symlink_of_another_user_is_not_followed(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), tmp_path / "link")
    os.lchown(tmp_path / "link", STRANGER, STRANGER)
    with pytest.raises(UnsafePath) as err:
        safefs.open_folder(tmp_path / "link", owner=me())
    assert str(err.value) == (f"{tmp_path}/link is a symlink owned by uid {STRANGER}; refusing to follow it to write secrets")
    assert same_folder(safefs.open_folder(tmp_path / "link", owner=(STRANGER, STRANGER)), tmp_path / "real")


def test_symlink_loops_end(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(UnsafePath, match=rf"^{tmp_path}/a/x: too many symlinks$"):
        safefs.open_folder(tmp_path / "a" / "x", owner=me())
    # Exactly the kernel's limit of 40 links in a chain is still followed.
    (tmp_path / "end").mkdir()
    os.symlink("end", tmp_path / "l0")
    for i in range(1, 40):
        os.symlink(f"l{i - 1}", tmp_path / f"l{i}")
    assert same_folder(safefs.open_folder(tmp_path / "l39", owner=me()), tmp_path / "end")
    os.symlink("l39", tmp_path / "l40")
    with pytest.raises(UnsafePath, match="too many symlinks"):
        safefs.open_folder(tmp_path / "l40", owner=me())


def test_read_trusted_file(tmp_path):
    (tmp_path / "id").write_bytes(b"role-id\n")
    assert safefs.read_trusted_file(tmp_path / "id") == b"role-id\n"
    assert safefs.read_trusted_file(str(tmp_path / "id"), limit=4) == b"role"
    (tmp_path / "big").write_bytes(b"x" * 70000)
    assert len(safefs.read_trusted_file(tmp_path / "big")) == 65536
    os.symlink("id", tmp_path / "link")
    os.symlink(str(tmp_path / "link"), tmp_path / "link2")
    assert safefs.read_trusted_file(tmp_path / "link2") == b"role-id\n"


def test_read_trusted_file_refusals(tmp_path):
    (tmp_path / "theirs").write_text("x")
    os.chown(tmp_path / "theirs", STRANGER, STRANGER)
    with pytest.raises(UnsafePath, match=rf"^{tmp_path}/theirs belongs to uid {STRANGER}, not to root or to vaultsync's user$"):
        safefs.read_trusted_file(tmp_path / "theirs")
    for mode in (0o620, 0o602):
        (tmp_path / "open").write_text("x")
        os.chmod(tmp_path / "open", mode)
        with pytest.raises(UnsafePath, match=rf"^{tmp_path}/open is writable by other users \(mode {mode:04o}\)$"):
            safefs.read_trusted_file(tmp_path / "open")
    os.chmod(tmp_path / "open", 0o644)
    assert safefs.read_trusted_file(tmp_path / "open") == b"x"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePath, match=rf"^{tmp_path}/fifo is not a regular file$"):
        safefs.read_trusted_file(tmp_path / "fifo")
    os.symlink("id", tmp_path / "theirlink")
    os.lchown(tmp_path / "theirlink", STRANGER, STRANGER)
    (tmp_path / "id").write_text("x")
    with pytest.raises(UnsafePath, match="is a symlink owned by uid"):
        safefs.read_trusted_file(tmp_path / "theirlink")
    with pytest.raises(FileNotFoundError):
        safefs.read_trusted_file(tmp_path / "absent")
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(OSError) as err:
        safefs.read_trusted_file(tmp_path / "loop")
    assert err.value.errno == errno.ELOOP
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "id").write_text("x")
    os.chmod(shared, 0o777)
    with pytest.raises(UnsafePath, match=f"^folder {shared} is writable by other users"):
        safefs.read_trusted_file(shared / "id")


def test_check_trusted_file_returns_the_stat(tmp_path):
    (tmp_path / "f").write_text("abc")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        st = safefs.check_trusted_file(fd, "shown")
        assert st.st_size == 3 and stat.S_ISREG(st.st_mode)
    finally:
        os.close(fd)


def test_symlink_targets_are_walked_one_checked_component_at_a_time(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    # "." is no step and ".." goes up from where the link is, not from a repeated folder.
    os.symlink("./../real", tmp_path / "links" / "dotted")
    assert same_folder(safefs.open_folder(tmp_path / "links" / "dotted", owner=me()), tmp_path / "real")
    # A target through a folder others can write is refused, though the folder it ends in is safe.
    (tmp_path / "links" / "open" / "inner").mkdir(parents=True)
    os.chmod(tmp_path / "links" / "open", 0o777)
    os.symlink("open/inner", tmp_path / "links" / "through")
    with pytest.raises(UnsafePath, match=f"^folder {tmp_path}/links/open is writable by other users"):
        safefs.open_folder(tmp_path / "links" / "through", owner=me())


@pytest.mark.parametrize("target", ["sticky/", "sticky/.", "sticky/./"])
def test_a_sticky_folder_named_last_by_a_symlink_is_the_last_folder(tmp_path, target):
    (tmp_path / "sticky").mkdir()
    os.chmod(tmp_path / "sticky", 0o1777)
    os.symlink(target, tmp_path / "link")
    with pytest.raises(UnsafePath, match=f"^folder {tmp_path}/sticky is writable by other users"):
        safefs.open_folder(tmp_path / "link", owner=me())
