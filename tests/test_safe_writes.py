"""Destination folders another local user controls (issue 10, finding 1), as a root daemon meets them.

Each test plays the unprivileged user (``other_user``, a real OS account) against the code that
writes secrets: a folder they can write, a file they planted, a folder they made in a sticky
``/tmp``, a symlink they own on the way. Every write must be refused with a clear error for that
destination, leave what is there alone, and never hand the secret to them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaultsync import render
from vaultsync.config import Destination
from vaultsync.daemon import write_destination

SECRET = {"DB_PASSWORD": "canary-pw-0123456789"}


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder the other user can reach (not list or write). pytest's own temp folders sit under
    ``/tmp/pytest-of-root`` (0700, re-tightened by pytest), which the other user cannot cross."""
    folder = Path(tempfile.mkdtemp(prefix="vaultsync-safe-", dir="/tmp"))
    folder.chmod(0o711)
    for ancestor in folder.parents:
        assert os.stat(ancestor).st_mode & 0o001, f"{ancestor} cannot be crossed by other users"
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write(path: Path, **kw: object):
    return write_destination(Destination(path=str(path), **kw), SECRET, service="api")  # type: ignore[arg-type]


def _owned_by(path: Path, user) -> bool:
    st = os.lstat(path)
    return (st.st_uid, st.st_gid) == (user.uid, user.gid)


def test_folder_writable_by_another_user_is_refused_and_the_planted_file_kept(tmp_path, other_user):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # e.g. a careless `chmod 777` on the compose folder
    planted = shared / "app.env"
    assert other_user.run("touch", str(planted)).returncode == 0  # they plant the destination file
    outcome = _write(planted)
    assert outcome.result == "failure"
    assert "writable by other users" in outcome.error and str(shared) in outcome.error
    assert planted.read_bytes() == b"" and _owned_by(planted, other_user)
    assert not [p for p in shared.iterdir() if p.name != "app.env"], "a temp file was left in their folder"


def test_group_writable_folder_is_refused(tmp_path, other_user):
    shared = tmp_path / "grp"
    shared.mkdir()
    os.chown(shared, 0, other_user.gid)
    shared.chmod(0o770)
    outcome = _write(shared / "app.env")
    assert outcome.result == "failure" and "writable by other users" in outcome.error


def test_folder_made_in_advance_by_another_user_in_a_sticky_folder_is_refused(tmp_path, other_user):
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    assert other_user.run("mkdir", "-m", "0755", str(sticky / "app")).returncode == 0
    outcome = _write(sticky / "app" / "app.env")
    assert outcome.result == "failure" and f"uid {other_user.uid}" in outcome.error
    assert not (sticky / "app" / "app.env").exists()


def test_a_sticky_root_folder_may_be_crossed_to_a_safe_one(tmp_path):
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert _write(sticky / "mine" / "app.env").result == "success"  # created 0700 by us, inside
    assert (os.stat(sticky / "mine").st_mode & 0o777) == 0o700
    assert _write(sticky / "direct.env").result == "failure"  # but never written straight into it


def test_symlinked_folder_owned_by_another_user_is_not_followed(tmp_path, other_user):
    elsewhere = tmp_path / "etc-x"  # stands for /etc/x: where root may write, they may not
    elsewhere.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    link = shared / "sub"
    link.symlink_to(elsewhere)
    os.lchown(link, other_user.uid, other_user.gid)  # their link (made in a folder they once could write)
    outcome = _write(link / "app.env")
    assert outcome.result == "failure" and "symlink owned by uid" in outcome.error
    assert list(elsewhere.iterdir()) == []


def test_a_root_owned_symlink_on_the_way_is_followed(tmp_path):
    real = tmp_path / "run"
    real.mkdir()
    (tmp_path / "var-run").symlink_to(real)  # like /var/run -> /run
    assert _write(tmp_path / "var-run" / "app" / "app.env").result == "success"
    assert "canary-pw" in (real / "app" / "app.env").read_text()


def test_the_file_planted_in_a_safe_folder_never_lends_its_owner(tmp_path, other_user):
    """The folder is fine, but a file of theirs sits at the destination (planted before the folder
    was locked down, or chowned by hand): the secret must not become theirs."""
    folder = tmp_path / "app"
    folder.mkdir(mode=0o755)
    planted = folder / "app.env"
    planted.write_text("old\n")
    os.chown(planted, other_user.uid, other_user.gid)
    assert _write(planted).result == "success"
    st = os.stat(planted)
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert "canary-pw" in planted.read_text()


def test_owner_and_group_come_from_the_config(tmp_path, other_user):
    folder = tmp_path / "svc"
    assert _write(folder / "app.env", owner=other_user.name, group=str(other_user.gid)).result == "success"
    assert _owned_by(folder / "app.env", other_user) and _owned_by(folder, other_user)
    # the service's own folder is trusted for the service's own file
    assert _write(folder / "second.env", owner=str(other_user.uid)).result == "success"


def test_unknown_owner_fails_that_destination_with_its_name(tmp_path):
    outcome = _write(tmp_path / "a.env", owner="no-such-user-xyz")
    assert outcome.result == "failure" and "unknown user 'no-such-user-xyz'" in outcome.error
    assert not (tmp_path / "a.env").exists()


def test_a_parent_that_is_a_regular_file_fails_that_destination_only(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert render.remove_stale_temp_files(blocker / "app.env") == 0  # daemon start-up must not crash
    outcome = _write(blocker / "app.env")
    assert outcome.result == "failure" and "not a folder" in outcome.error


def test_atomic_write_refuses_directly(tmp_path, other_user):
    from vaultsync.safefs import UnsafePath

    folder = tmp_path / "o"
    folder.mkdir()
    os.chown(folder, other_user.uid, other_user.gid)
    with pytest.raises(UnsafePath):
        render.atomic_write(folder / "x", b"secret")
    assert list(folder.iterdir()) == []


# --- pid files (finding 5: a confused deputy) -------------------------------------------------------


@pytest.fixture
def sleeper():
    import subprocess

    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def _pidfile(folder: Path, pid: int) -> Path:
    path = folder / "svc.pid"
    path.write_text(f"{pid}\n")
    path.chmod(0o644)
    return path


def test_pidfile_of_another_user_is_refused(tmp_path, other_user, sleeper):
    path = _pidfile(tmp_path, sleeper.pid)
    os.chown(path, other_user.uid, other_user.gid)  # they write which process root signals
    with pytest.raises(render.PidfileError, match=f"belongs to uid {other_user.uid}"):
        render.signal_pidfile(path, "TERM")
    assert sleeper.poll() is None


def test_pidfile_writable_by_others_is_refused(tmp_path, sleeper):
    path = _pidfile(tmp_path, sleeper.pid)
    path.chmod(0o666)
    with pytest.raises(render.PidfileError, match="writable by other users"):
        render.signal_pidfile(path, "TERM")
    assert sleeper.poll() is None


def test_pidfile_in_a_folder_another_user_controls_is_refused(tmp_path, other_user, sleeper):
    folder = tmp_path / "run"
    folder.mkdir()
    os.chown(folder, other_user.uid, other_user.gid)
    path = _pidfile(folder, sleeper.pid)
    with pytest.raises(render.PidfileError, match="belongs to uid"):
        render.signal_pidfile(path, "TERM")
    assert sleeper.poll() is None


def test_pidfile_older_than_the_process_is_a_reused_pid(tmp_path, sleeper):
    path = _pidfile(tmp_path, sleeper.pid)
    old = os.stat(path).st_mtime - 3600  # written an hour before this process existed
    os.utime(path, (old, old))
    with pytest.raises(render.PidfileError, match="pid was reused"):
        render.signal_pidfile(path, "TERM")
    assert sleeper.poll() is None


def test_a_good_pidfile_still_works(tmp_path, sleeper):
    path = _pidfile(tmp_path, sleeper.pid)
    assert render.signal_pidfile(path, "TERM") == sleeper.pid
    assert sleeper.wait(timeout=5) == -15


def test_daemon_starts_and_serves_the_others_when_a_destination_parent_is_a_file(kv2, root, vault_server, tmp_path):
    from tests.daemon_harness import DaemonProc, daemon_env, wait_for

    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    (tmp_path / "blocker").write_text("a file, not a folder")
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nprefix = "compose"\n[daemon]\npoll_interval = "1s"\n'
                   '[services.api]\n[[services.api.destinations]]\npath = "blocker/api.env"\n'
                   '[[services.api.destinations]]\npath = "ok/api.env"\n')
    token = root.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    d = DaemonProc(cfg, daemon_env(vault_server, token, tmp_path), tmp_path).start(wait_ready=False)
    try:
        wait_for(lambda: (tmp_path / "ok" / "api.env").exists(), 20, "the good destination rendered")
        status = d.status()["services"]["api"]["destinations"]
        assert status[str(tmp_path / "blocker" / "api.env")]["result"] == "failure"
        assert "not a folder" in status[str(tmp_path / "blocker" / "api.env")]["error"]
    finally:
        assert d.stop() == 0


# --- the daemon's own credentials: whoever could swap them picks the role it logs in as ---------------


@pytest.mark.parametrize("attack", ["owned by them", "writable by others", "symlink", "folder of theirs"])
def test_credentials_files_another_user_controls_are_refused(tmp_path, other_user, attack):
    from vaultsync import auth
    from vaultsync.config import AuthSettings
    from vaultsync.errors import ConfigError

    folder = tmp_path / "auth"
    folder.mkdir(mode=0o700)
    role_id = folder / "role_id"
    role_id.write_text("their-role-id\n")
    role_id.chmod(0o600)
    if attack == "owned by them":
        os.chown(role_id, other_user.uid, other_user.gid)
    elif attack == "writable by others":
        role_id.chmod(0o666)
    elif attack == "symlink":
        real = tmp_path / "real_role_id"
        role_id.rename(real)
        role_id.symlink_to(real)
        os.lchown(role_id, other_user.uid, other_user.gid)
    else:
        os.chown(folder, other_user.uid, other_user.gid)
    settings = AuthSettings(method="approle", role_id_file=str(role_id), secret_id_file=str(folder / "secret_id"))
    with pytest.raises(ConfigError, match="auth.role_id_file"):
        auth.login(None, None, settings)  # refused before any request


def test_credentials_through_a_root_owned_symlink_are_read(tmp_path):
    from vaultsync import safefs

    real = tmp_path / "creds" / "role_id"
    real.parent.mkdir()
    real.write_text("rid\n")
    (tmp_path / "role_id").symlink_to(real)  # like a secrets mount's ..data links
    assert safefs.read_trusted_file(tmp_path / "role_id") == b"rid\n"
