"""Issue 13: what a person at a terminal sees, through a real pseudo-terminal (pexpect): the
yes-only prompt before overwriting or removing values, coloured console logs (none with NO_COLOR),
the progress bar, and human logs instead of JSON lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from tests.conftest import ROOT


def spawn(env: dict[str, str], *args: str, **more: str) -> pexpect.spawn:
    env = {k: v for k, v in env.items() if k != "NO_COLOR"}
    env.update(TERM="xterm", **more)
    return pexpect.spawn(sys.executable, ["-m", "vaultsync", *args], env=env, cwd=str(ROOT), encoding="utf-8",
                         timeout=60, dimensions=(40, 200))


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "api" / ".env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read(root, mount: str) -> dict:
    return root.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=mount, raise_on_deleted_version=True)["data"]["data"]


@pytest.mark.parametrize("answer, applied", [("no", False), ("y", False), ("yes", True)])
def test_prune_on_a_terminal_asks_and_only_yes_applies(vault_env, root, kv2, tmp_path, answer, applied):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "old", "GONE": "x"}, mount_point=kv2)
    path = env_file(tmp_path, "A=new\n")
    child = spawn(vault_env, "migrate", "--mount", kv2, "--prune", str(path))
    child.expect("Plan: 0 to add, 1 to change, 1 to remove")
    assert "\x1b[33m~ A" in child.before and "\x1b[31m- GONE" in child.before, child.before  # terraform's colours
    child.expect("Only 'yes' will be accepted")
    child.expect("Enter a value: ")
    child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    if applied:
        assert child.exitstatus == 0, child.before
        assert read(root, kv2) == {"A": "new"}
    else:
        assert child.exitstatus == 1 and "Apply cancelled" in child.before
        assert read(root, kv2) == {"A": "old", "GONE": "x"}


def test_yes_skips_the_prompt_and_additions_alone_never_ask(vault_env, root, kv2, tmp_path):
    path = env_file(tmp_path, "A=1\n")
    child = spawn(vault_env, "migrate", "--mount", kv2, str(path))  # only additions: nothing to lose
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Enter a value" not in child.before
    path.write_text("A=2\n")
    child = spawn(vault_env, "migrate", "--mount", kv2, "--auto-approve", str(path))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Enter a value" not in child.before and read(root, kv2) == {"A": "2"}


def test_console_logs_on_a_terminal_are_coloured_unless_no_color_and_show_a_progress_bar(vault_env, kv2, tmp_path):
    path = env_file(tmp_path, "A=1\nB=2\n")
    child = spawn(vault_env, "--log-level", "info", "migrate", "--mount", kv2, "--dry-run", str(path))
    child.expect(pexpect.EOF)
    out = child.before
    assert "migrate planned" in out and "\x1b[" in out, out
    assert '{"' not in out  # human lines, not JSON
    child = spawn(vault_env, "--log-level", "info", "migrate", "--mount", kv2, "--dry-run", str(path), NO_COLOR="1")
    child.expect(pexpect.EOF)
    assert "migrate planned" in child.before and "\x1b[" not in child.before, child.before
    child = spawn(vault_env, "migrate", "--mount", kv2, str(path))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "writing" in child.before and "100%" in child.before, child.before
    assert "migrate planned" not in child.before  # info lines stay out of a one-shot command's terminal output
