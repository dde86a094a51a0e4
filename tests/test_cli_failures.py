"""Failures on the command line (issue 10, finding 6): one clean, redacted message for anything
unexpected; a secret_id issued by a command that then fails is destroyed; --wrap-ttl only whole
seconds >= 1."""

from __future__ import annotations

import json
import os
import uuid

import hvac.exceptions
import pytest


@pytest.fixture
def approle(root, tmp_path):
    """An AppRole ``api`` on a fresh auth mount, and a config naming that mount."""
    mount = "ar-" + uuid.uuid4().hex[:8]
    root.sys.enable_auth_method("approle", path=mount)
    root.adapter.post(f"/v1/auth/{mount}/role/api", json={"secret_id_ttl": "1h"})
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[auth]\nmount = "{mount}"\n')
    yield mount, cfg
    root.sys.disable_auth_method(mount)


def _issued(root, mount: str) -> list[str]:
    try:
        return root.adapter.list(f"/v1/auth/{mount}/role/api/secret-id")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return []


@pytest.mark.parametrize("ttl", ["0", "0s", "0.5", "1.5s", "-1"])
def test_wrap_ttl_must_be_whole_seconds_of_at_least_one(root, cli, approle, tmp_path, ttl):
    mount, cfg = approle
    res = cli("--config", str(cfg), "approle", "credentials", "api", "--out", str(tmp_path / "creds"), "--wrap-ttl", ttl)
    assert res.code == 2 and "--wrap-ttl" in res.stderr, res.output
    assert _issued(root, mount) == [] and not (tmp_path / "creds").exists()
    assert "Traceback" not in res.stderr


def test_a_secret_id_is_destroyed_when_writing_it_fails(root, cli, approle, tmp_path):
    mount, cfg = approle
    unsafe = tmp_path / "shared"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    res = cli("--config", str(cfg), "approle", "credentials", "api", "--out", str(unsafe), "--wrap-ttl", "60s")
    assert res.code == 1 and "writable by other users" in res.stderr, res.output
    assert _issued(root, mount) == [], "the issued secret_id is still valid"
    assert list(unsafe.iterdir()) == []


def test_an_unexpected_error_after_issuing_is_one_redacted_line_and_the_secret_id_is_destroyed(root, cli, approle):
    mount, cfg = approle
    res = cli("--config", str(cfg), "approle", "credentials", "api", "--out", "/proc/vaultsync-test/creds")
    assert res.code == 1, res.output
    assert "Traceback" not in res.stderr
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    unexpected = [e for e in events if e["event"] == "unexpected error"]
    assert len(unexpected) == 1 and unexpected[0]["level"] == "error" and unexpected[0]["error_type"]
    assert any(line.startswith("error: unexpected ") for line in res.stderr.splitlines())
    assert _issued(root, mount) == []


def test_credentials_into_a_folder_with_a_planted_file_are_ours_not_theirs(root, cli, approle, tmp_path, other_user):
    mount, cfg = approle
    out = tmp_path / "creds"
    out.mkdir(mode=0o700)
    (out / "secret_id").write_text("planted\n")
    os.chown(out / "secret_id", other_user.uid, other_user.gid)
    res = cli("--config", str(cfg), "approle", "credentials", "api", "--out", str(out))
    assert res.code == 0, res.output
    st = os.stat(out / "secret_id")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), os.getegid(), 0o600)
    assert len(_issued(root, mount)) == 1
