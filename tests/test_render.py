"""atomic_write, hooks and WaitWindow against real files and real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vaultsync import render
from vaultsync.safefs import UnsafePath
from vaultsync.render import (
    DEFAULT_HOOK_ENV,
    HookError,
    PidfileError,
    WaitWindow,
    atomic_write,
    remove_stale_temp_files,
    run_command,
    signal_pidfile,
)

ROOT = Path(__file__).resolve().parent.parent


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask0():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------
# atomic_write
# --------------------------------------------------------------------------


def test_writes_new_file_0600(tmp_path, umask0):
    target = tmp_path / "app.env"
    assert atomic_write(target, b"A=1\n") is True
    assert target.read_bytes() == b"A=1\n"
    assert mode_of(target) == 0o600
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o644])
def test_mode_exact_under_any_umask(tmp_path, mode):
    for umask in (0o000, 0o022, 0o077, 0o277):
        old = os.umask(umask)
        try:
            target = tmp_path / f"f{umask:o}"
            atomic_write(target, b"x", mode=mode)
        finally:
            os.umask(old)
        assert mode_of(target) == mode


def test_mode_is_set_before_any_byte_is_written(tmp_path, umask0, monkeypatch):
    real_write = os.write
    seen = []

    def spy(fd, data):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    atomic_write(tmp_path / "f", b"secret", mode=0o600)
    assert seen and set(seen) == {0o600}


def test_creates_missing_parents_0700(tmp_path, umask0):
    target = tmp_path / "a" / "b" / "c" / "app.env"
    assert atomic_write(target, b"x") is True
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode_of(folder) == 0o700


def test_existing_parent_mode_untouched(tmp_path):
    os.chmod(tmp_path, 0o755)
    atomic_write(tmp_path / "f", b"x")
    assert mode_of(tmp_path) == 0o755


def test_unchanged_content_is_not_rewritten(tmp_path):
    target = tmp_path / "app.env"
    atomic_write(target, b"same\n")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    before = os.stat(target)
    assert atomic_write(target, b"same\n") is False
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_mtime_ns, before.st_ctime_ns)
    assert temp_files(tmp_path) == []


def test_changed_content_is_rewritten_new_inode(tmp_path):
    target = tmp_path / "app.env"
    atomic_write(target, b"one\n")
    inode = os.stat(target).st_ino
    assert atomic_write(target, b"two\n") is True
    assert target.read_bytes() == b"two\n"
    assert os.stat(target).st_ino != inode


def test_same_content_wrong_mode_is_rewritten(tmp_path):
    target = tmp_path / "app.env"
    target.write_bytes(b"x")
    os.chmod(target, 0o644)
    assert atomic_write(target, b"x") is True
    assert mode_of(target) == 0o600
    assert atomic_write(target, b"x") is False


def test_same_size_different_content(tmp_path):
    target = tmp_path / "f"
    atomic_write(target, b"aaaa")
    assert atomic_write(target, b"aaab") is True
    assert target.read_bytes() == b"aaab"


def test_owner_applied_and_compared(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("chown to another user needs root: run the tests as root (CI does)", pytrace=False)
    target = tmp_path / "d" / "f"
    assert atomic_write(target, b"x", owner=(1234, 5678)) is True
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (1234, 5678) and mode_of(target) == 0o600
    assert (os.stat(tmp_path / "d").st_uid, os.stat(tmp_path / "d").st_gid) == (1234, 5678)
    assert atomic_write(target, b"x", owner=(1234, 5678)) is False
    other = tmp_path / "g"
    assert atomic_write(other, b"x", owner=(4321, -1)) is True
    assert (os.stat(other).st_uid, os.stat(other).st_gid) == (4321, os.getegid())  # -1: vaultsync's own
    with pytest.raises(UnsafePath, match="belongs to uid 1234"):  # 1234's folder is not 4321's
        atomic_write(target, b"x", owner=(4321, -1))


def test_rewrite_never_takes_the_owner_of_the_file_it_replaces(tmp_path):
    """Whoever owns the file that sits there (planted, or chowned by hand) must not get the next
    secret: owner and group come from the config, default the user vaultsync runs as."""
    if os.geteuid() != 0:
        pytest.fail("chown to another user needs root: run the tests as root (CI does)", pytrace=False)
    target = tmp_path / "f"
    target.write_bytes(b"old")
    os.chown(target, 2345, 3456)
    assert atomic_write(target, b"new", backup=True) is True
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert atomic_write(target, b"new", owner=(2345, 3456)) is True
    assert (os.stat(target).st_uid, os.stat(target).st_gid) == (2345, 3456)
    fresh = tmp_path / "fresh"
    atomic_write(fresh, b"x")
    assert (os.stat(fresh).st_uid, os.stat(fresh).st_gid) == (os.geteuid(), os.getegid())


def test_backup_keeps_previous_version(tmp_path):
    target = tmp_path / "app.env"
    bak = tmp_path / "app.env.bak"
    atomic_write(target, b"v1", backup=True)
    assert not bak.exists()  # nothing to back up yet
    atomic_write(target, b"v2", backup=True)
    assert (target.read_bytes(), bak.read_bytes()) == (b"v2", b"v1")
    atomic_write(target, b"v3", backup=True)
    assert (target.read_bytes(), bak.read_bytes()) == (b"v3", b"v2")
    assert mode_of(bak) == 0o600
    assert atomic_write(target, b"v3", backup=True) is False
    assert bak.read_bytes() == b"v2"  # unchanged write does not rotate
    atomic_write(target, b"v4")  # backup=False leaves the old backup alone
    assert bak.read_bytes() == b"v2"
    assert temp_files(tmp_path) == []


def test_failure_in_fsync_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "app.env"
    atomic_write(target, b"old")
    inode = os.stat(target).st_ino

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(target, b"new", backup=True)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.stat(target).st_ino == inode
    assert not (tmp_path / "app.env.bak").exists()
    assert temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.env"]


def test_failure_in_write_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "app.env"
    atomic_write(target, b"old")
    real_write = os.write
    calls = []

    def short_then_fail(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))  # partial write, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert temp_files(tmp_path) == []


def test_failure_in_final_rename_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "app.env"
    atomic_write(target, b"old")
    real_replace = os.replace

    def replace(src, dst, **dir_fds):
        if dst == target.name:  # relative to the folder's descriptor
            raise OSError(30, "Read-only file system")
        return real_replace(src, dst, **dir_fds)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Read-only"):
        atomic_write(target, b"new", backup=True)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert (tmp_path / "app.env.bak").read_bytes() == b"old"  # a backup of the current file is harmless
    assert temp_files(tmp_path) == []


def test_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "f"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_target_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        atomic_write(tmp_path / "d", b"x")
    assert temp_files(tmp_path) == []


def test_symlink_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    link = tmp_path / "app.env"
    link.symlink_to(victim)
    assert atomic_write(link, b"do not touch") is True  # a link is never "unchanged"
    assert not link.is_symlink() and link.read_bytes() == b"do not touch"
    atomic_write(link, b"new")
    assert victim.read_bytes() == b"do not touch"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "f", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "f", b"x", mode=0o100600)
    assert list(tmp_path.iterdir()) == []


def test_large_and_empty_payloads(tmp_path):
    target = tmp_path / "f"
    big = os.urandom(3 * 1024 * 1024 + 17)
    assert atomic_write(target, big) is True
    assert target.read_bytes() == big
    assert atomic_write(target, big) is False
    assert atomic_write(target, b"") is True
    assert target.read_bytes() == b""
    assert atomic_write(target, b"") is False


TORN_WRITER = textwrap.dedent(
    """
    import sys
    from vaultsync.render import atomic_write

    path = sys.argv[1]
    payloads = [b"A" * (1 << 20), b"B" * (1 << 20)]
    atomic_write(path, payloads[1])
    sys.stdout.write("writing\\n")
    sys.stdout.flush()
    i = 0
    while True:
        atomic_write(path, payloads[i % 2])
        i += 1
    """
)


def test_sigkill_never_leaves_a_torn_file(tmp_path):
    """A writer killed at random moments leaves exactly one whole payload."""
    script = tmp_path / "writer.py"
    script.write_text(TORN_WRITER)
    target = tmp_path / "out" / "big.env"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rng = random.Random(1234)
    whole = {b"A" * (1 << 20), b"B" * (1 << 20)}
    kills = mid_write = 0
    # Kill until enough kills provably landed inside a write (each leaves its temp file):
    # a kill between two writes proves nothing about atomicity.
    while mid_write < 5:
        assert kills < 60, f"only {mid_write} of {kills} kills landed mid-write: the test proved nothing"
        before = len(temp_files(target.parent)) if target.parent.exists() else 0
        proc = subprocess.Popen([sys.executable, str(script), str(target)], env=env, stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"writing\n", "writer died"  # it is in its write loop
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        mid_write += len(temp_files(target.parent)) > before
        assert target.read_bytes() in whole
        assert mode_of(target) == 0o600
    # Whatever temp files the kills left behind are ours to sweep at start-up.
    leftovers = temp_files(target.parent)
    print(f"{kills} kills left {len(leftovers)} temp files (kills that landed mid-write)")
    assert remove_stale_temp_files(target) == len(leftovers)
    assert temp_files(target.parent) == []
    assert target.read_bytes() in whole


def test_remove_stale_temp_files_is_specific(tmp_path):
    (tmp_path / ".app.env.abc123.tmp").write_bytes(b"x")
    (tmp_path / ".other.env.abc123.tmp").write_bytes(b"x")
    (tmp_path / "app.env.tmp").write_bytes(b"x")
    (tmp_path / "app.env").write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path / "app.env") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.env.abc123.tmp", "app.env", "app.env.tmp"]
    assert remove_stale_temp_files(tmp_path / "missing" / "x") == 0


# --------------------------------------------------------------------------
# run_command
# --------------------------------------------------------------------------

PY = sys.executable


def test_argv_passes_unchanged_without_shell():
    args = ["with space", "$HOME", "'quoted'", '"dq"', "", "*", "a;b", "`id`", "$(id)", "é\n"]
    result = run_command([PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args], timeout=30)
    assert result.ok and result.returncode == 0
    assert json.loads(result.stdout_tail) == args
    assert result.argv[3:] == tuple(args)


def test_default_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "hvs.SECRETVALUE")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    result = run_command(["env"], timeout=30)
    assert result.ok
    env = dict(line.split("=", 1) for line in result.stdout_tail.splitlines())
    assert env == dict(DEFAULT_HOOK_ENV) == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    assert "SECRETVALUE" not in result.stdout_tail


def test_explicit_environment_is_exactly_that(monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "hvs.SECRETVALUE")
    result = run_command(["/usr/bin/env"], timeout=30, env={"ONLY": "this"})
    assert result.stdout_tail.splitlines() == ["ONLY=this"]


def test_timeout_kills_quickly():
    start = time.monotonic()
    result = run_command(["sleep", "30"], timeout=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 5
    assert result.timed_out and not result.ok
    assert result.returncode == -signal.SIGKILL
    assert 0.4 < result.duration < 5


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_timeout_kills_the_whole_process_group():
    result = run_command(["sh", "-c", "sleep 30 & echo $!; wait"], timeout=1.0)
    assert result.timed_out
    child = int(result.stdout_tail.split()[0])
    deadline = time.monotonic() + 5
    while not _gone(child):
        assert time.monotonic() < deadline, "grandchild survived the timeout"
        time.sleep(0.05)


def test_background_child_holding_the_pipe_is_killed_at_timeout():
    start = time.monotonic()
    result = run_command(["sh", "-c", "sleep 30 & exit 0"], timeout=0.5)
    assert time.monotonic() - start < 5
    assert result.timed_out


def test_exit_code_and_stderr_tail():
    code = "import sys; sys.stderr.write('x' * 100000 + 'THE END'); sys.stdout.write('out'); sys.exit(3)"
    result = run_command([PY, "-c", code], timeout=30)
    assert result.returncode == 3 and not result.ok and not result.timed_out
    assert len(result.stderr_tail) == 4096 and result.stderr_tail.endswith("THE END")
    assert result.stderr_truncated and not result.stdout_truncated
    assert result.stdout_tail == "out"


def test_undecodable_output_is_replaced():
    result = run_command([PY, "-c", "import sys; sys.stderr.buffer.write(b'bad \\xff byte')"], timeout=30)
    assert result.stderr_tail == "bad \ufffd byte"


def test_missing_executable_is_a_hook_error():
    with pytest.raises(HookError, match="no-such-hook-binary"):
        run_command(["no-such-hook-binary-xyz"], timeout=5)


@pytest.mark.parametrize(
    ("argv", "timeout", "exc"),
    [("echo hi", 5, TypeError), ([], 5, ValueError), (["echo", 1], 5, TypeError), (["echo"], 0, ValueError)],
)
def test_run_command_rejects_bad_arguments(argv, timeout, exc):
    with pytest.raises(exc):
        run_command(argv, timeout=timeout)


# --------------------------------------------------------------------------
# signal_pidfile
# --------------------------------------------------------------------------

HUP_RECORDER = textwrap.dedent(
    """
    import os, signal, sys, time
    pidfile, record = sys.argv[1], sys.argv[2]
    def on_hup(signum, frame):
        with open(record, "a") as fh:
            fh.write(f"{signum}\\n")
    signal.signal(signal.SIGHUP, on_hup)
    with open(pidfile + ".new", "w") as fh:
        fh.write(f"{os.getpid()}\\n")
    os.replace(pidfile + ".new", pidfile)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
    """
)


def test_signal_pidfile_delivers_sighup(tmp_path):
    script = tmp_path / "recorder.py"
    script.write_text(HUP_RECORDER)
    pidfile, record = tmp_path / "app.pid", tmp_path / "record"
    proc = subprocess.Popen([PY, str(script), str(pidfile), str(record)])
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for count, how in enumerate(("HUP", "SIGHUP", signal.SIGHUP), start=1):
            assert signal_pidfile(pidfile, how) == proc.pid
            # wait for each: identical pending signals coalesce into one
            while not record.exists() or len(record.read_text().split()) < count:
                assert time.monotonic() < deadline, "SIGHUP never recorded"
                time.sleep(0.01)
        assert record.read_text().split() == [str(int(signal.SIGHUP))] * 3
        assert proc.poll() is None  # HUP handled, not fatal
    finally:
        proc.kill()
        proc.wait()


def test_signal_pidfile_missing_file(tmp_path):
    with pytest.raises(PidfileError, match="does not exist"):
        signal_pidfile(tmp_path / "nope.pid", "HUP")


@pytest.mark.parametrize("content", ["", "abc\n", "12ab", " \n", "-5\n", "0\n", "1\n", "4194305\n", "１２３\n", "1.5"])
def test_signal_pidfile_garbage(tmp_path, content):
    pidfile = tmp_path / "bad.pid"
    pidfile.write_text(content)
    with pytest.raises(PidfileError) as info:
        signal_pidfile(pidfile, "HUP")
    assert str(pidfile) in str(info.value)


def test_signal_pidfile_refuses_own_pid(tmp_path):
    pidfile = tmp_path / "me.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    with pytest.raises(PidfileError, match="this very process"):
        signal_pidfile(pidfile, "HUP")


def test_signal_pidfile_dead_process(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text(f"{proc.pid}\nextra line ignored\n")
    with pytest.raises(PidfileError, match="not running"):
        signal_pidfile(pidfile, "HUP")


def test_signal_pidfile_unknown_signal(tmp_path):
    pidfile = tmp_path / "x.pid"
    pidfile.write_text("12345\n")
    with pytest.raises(ValueError, match="unknown signal"):
        signal_pidfile(pidfile, "SIGNOPE")
    with pytest.raises(ValueError, match="unknown signal"):
        signal_pidfile(pidfile, 999)


# --------------------------------------------------------------------------
# WaitWindow
# --------------------------------------------------------------------------


def test_wait_window_coalesces_until_quiet():
    w = WaitWindow(2.0, 10.0)
    assert not w.pending and w.due_at is None and not w.due(100.0)
    assert w.on_change(0.0) == 2.0
    assert not w.due(1.9) and w.due(2.0)
    assert w.on_change(1.5) == 3.5  # reset to now + min
    assert not w.due(3.0) and w.due(3.5)


def test_wait_window_max_caps_a_constant_stream_of_changes():
    w = WaitWindow(2.0, 10.0)
    due = [w.on_change(t * 1.0) for t in range(20)]
    assert due[:9] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert set(due[8:]) == {10.0}  # never later than first change + max
    assert w.due(10.0)
    w.rendered()
    assert not w.pending and not w.due(1000.0)
    assert w.on_change(30.0) == 32.0  # a new burst starts a new max window


def test_wait_window_defaults_and_zero():
    assert WaitWindow(5.0).max_s == 20.0
    w = WaitWindow(0.0, 0.0)
    assert w.on_change(7.0) == 7.0 and w.due(7.0)


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 5.0), (5.0, 1.0)])
def test_wait_window_rejects_bad_bounds(lo, hi):
    with pytest.raises(ValueError):
        WaitWindow(lo, hi)


def test_module_has_no_global_hook_state():
    # DEFAULT_HOOK_ENV is read-only data; run_command must not mutate it.
    before = dict(DEFAULT_HOOK_ENV)
    run_command(["true"], timeout=10)
    assert dict(render.DEFAULT_HOOK_ENV) == before
