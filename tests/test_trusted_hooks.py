"""Outside tester's finding 10: hook programs and templates decide what a root daemon runs and
writes; one that another user owns or can write is refused for that destination, with a clear
error, as pid files are (safefs.check_trusted_file)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from vaultsync import safefs
from vaultsync.config import Destination
from vaultsync.daemon import write_destination

SECRET = {"DB_PASSWORD": "canary-pw-0123456789"}
HOOK_PATH = "/usr/bin:/bin"


def _template(tmp_path: Path) -> Path:
    template = tmp_path / "app.env.j2"
    template.write_text("PW={{ DB_PASSWORD }}\n")
    template.chmod(0o644)
    return template


def _render(tmp_path: Path, template: Path):
    dest = Destination(path=str(tmp_path / "app.env"), style="template", template=str(template))
    return write_destination(dest, SECRET, service="api")


def test_template_owned_by_another_user_is_refused_and_the_file_kept(tmp_path, other_user):
    (tmp_path / "app.env").write_text("PW=previous\n")
    template = _template(tmp_path)
    os.chown(template, other_user.uid, other_user.gid)
    outcome = _render(tmp_path, template)
    assert outcome.result == "failure"
    assert f"template {template} belongs to uid {other_user.uid}" in outcome.error and "refusing" in outcome.error
    assert (tmp_path / "app.env").read_text() == "PW=previous\n"


def test_group_or_world_writable_template_is_refused(tmp_path):
    template = _template(tmp_path)
    template.chmod(0o664)
    outcome = _render(tmp_path, template)
    assert outcome.result == "failure" and "writable by other users" in outcome.error
    assert not (tmp_path / "app.env").exists()


def test_a_trusted_template_renders(tmp_path):
    assert _render(tmp_path, _template(tmp_path)).result == "success"
    assert (tmp_path / "app.env").read_text().endswith("PW=canary-pw-0123456789\n")


def _script(tmp_path: Path, marker: Path) -> Path:
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    return hook


def test_hook_program_owned_by_another_user_or_writable_by_others_is_refused(tmp_path, other_user):
    hook = _script(tmp_path, tmp_path / "ran")
    safefs.check_trusted_program(str(hook), HOOK_PATH)
    os.chown(hook, other_user.uid, other_user.gid)
    with pytest.raises(safefs.UnsafePath, match=f"hook program {hook} belongs to uid {other_user.uid}.*refusing to run it"):
        safefs.check_trusted_program(str(hook), HOOK_PATH)
    os.chown(hook, 0, 0)
    hook.chmod(0o777)
    with pytest.raises(safefs.UnsafePath, match="writable by other users"):
        safefs.check_trusted_program(str(hook), HOOK_PATH)


def test_hook_program_through_a_symlink_another_user_owns_is_refused(tmp_path, other_user):
    hook = _script(tmp_path, tmp_path / "ran")
    link = tmp_path / "hook-link"
    link.symlink_to(hook)
    safefs.check_trusted_program(str(link), HOOK_PATH)
    os.lchown(link, other_user.uid, other_user.gid)
    with pytest.raises(safefs.UnsafePath, match="symlink owned by uid"):
        safefs.check_trusted_program(str(link), HOOK_PATH)


def test_usual_hook_programs_pass(tmp_path):
    safefs.check_trusted_program(sys.executable, HOOK_PATH)  # a chain of root-owned symlinks
    safefs.check_trusted_program("sh", HOOK_PATH)  # looked up on the hooks' PATH
    safefs.check_trusted_program("no-such-program-xyz", HOOK_PATH)  # not found: the run says so


def test_render_does_not_run_a_hook_another_user_owns(tmp_path, kv2, root, cli, other_user):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    marker = tmp_path / "ran"
    hook = _script(tmp_path, marker)
    os.chown(hook, other_user.uid, other_user.gid)
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nversion = 2\n[services.api]\n[[services.api.destinations]]\npath = "api.env"\n'
                   f'command = ["{hook}"]\n')
    res = cli("--config", str(cfg), "render")
    assert "hook failed" in res.stderr and f"belongs to uid {other_user.uid}" in res.stderr, res.output
    assert not marker.exists(), "a hook another user owns ran as root"
