"""Issue 11: migrate against a server that hangs mid-run, and with a deadline. Outcomes are
"written", "not written" and "unknown (re-run to converge)"; nothing is claimed that is not known."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hvac

from tests.conftest import ROOT
from tests.daemon_harness import wait_for

N = 1500


def sources(tmp_path: Path, n: int = N) -> list[str]:
    files = []
    for i in range(n):
        f = tmp_path / "src" / f"s{i}" / ".env"
        f.parent.mkdir(parents=True)
        f.write_text(f"A=value-{i}\n")
        files.append(str(f))
    return files


def stored(root: hvac.Client, mount: str) -> dict[str, str]:
    """{service: value of A} for every secret under compose/ (after the server processed everything)."""
    try:
        keys = root.secrets.kv.v2.list_secrets(path="compose", mount_point=mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    out = {}
    for k in keys:
        out[k] = root.secrets.kv.v2.read_secret_version(path=f"compose/{k}", mount_point=mount, raise_on_deleted_version=True)["data"]["data"]["A"]
    return out


def migrate(env: dict[str, str], cfg: Path, mount: str, files: list[str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vaultsync", "--config", str(cfg), "migrate", "--mount", mount, "--kv-version", "2",
                             "--output", "json", *extra, *files], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_hung_server_mid_migrate_reports_unknown_separately_gives_up_fast_and_a_rerun_converges(fresh_vault, tmp_path):
    root = fresh_vault.client(fresh_vault.token)
    mount = "mig"
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text('[vault]\ntimeout = "2s"\n')
    files = sources(tmp_path)
    env = fresh_vault.env(tmp_path, fresh_vault.token)
    proc = migrate(env, cfg, mount, files)
    try:
        wait_for(lambda: len(root.secrets.kv.v2.list_secrets(path="compose", mount_point=mount)["data"]["keys"]) >= 50, 60,
                 "the first writes", interval=0.02)
        os.kill(fresh_vault.pid, signal.SIGSTOP)
        hung = time.monotonic()
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            os.kill(fresh_vault.pid, signal.SIGCONT)
        gave_up = time.monotonic() - hung
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    result = json.loads(out)["result"]
    written = {p.split("/")[-1] for p in result["written"]}
    unknown = {u["path"].split("/")[-1] for u in result["unknown"]}
    not_written = {p.split("/")[-1] for p in result["abandoned"]} | {f["path"].split("/")[-1] for f in result["failed"]}
    assert len(written) + len(unknown) + len(not_written) == N and unknown, result["abandon_reason"]
    assert result["abandon_reason"] == "the server stopped answering"
    assert gave_up < 2 * 2 + 3, f"{gave_up:.1f}s to give up against a hung server (timeout 2 s)"
    time.sleep(1)  # requests the server had read before it stopped are processed now
    now = stored(root, mount)
    assert written <= set(now), "a write reported as written is not in Vault"
    assert not (not_written & set(now)), "a write reported as NOT written is in Vault"
    landed = len(unknown & set(now))
    print(f"\nhung server: gave up after {gave_up:.1f}s; {len(written)} written, {len(unknown)} unknown "
          f"({landed} of them landed), {len(not_written)} not written")
    assert "re-run to converge" in err or result["unknown"]
    again = migrate(env, cfg, mount, files)
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2
    assert stored(root, mount) == {f"s{i}": f"value-{i}" for i in range(N)}
    meta = root.secrets.kv.v2.read_secret_metadata(path="compose/s0", mount_point=mount)["data"]
    assert meta["current_version"] == 1, "written twice"


def test_deadline_abandons_the_remaining_writes_cleanly_and_reports_them(kv2, root, vault_server, tmp_path):
    files = sources(tmp_path)
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text("")
    env = vault_server.env(tmp_path, vault_server.token)
    started = time.monotonic()
    proc = migrate(env, cfg, kv2, files, "--deadline", "0.5s")
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, err
    result = json.loads(out)["result"]
    assert result["abandon_reason"] == "deadline reached" and result["abandoned"]
    assert len(result["written"]) + len(result["abandoned"]) == N and not result["unknown"] and not result["failed"]
    now = stored(root, kv2)
    assert {p.split("/")[-1] for p in result["written"]} == set(now)
    print(f"\ndeadline 0.5 s: {len(result['written'])} written, {len(result['abandoned'])} abandoned, exited after {took:.1f}s")
    text = subprocess.run([sys.executable, "-m", "vaultsync", "--config", str(cfg), "migrate", "--mount", kv2, "--deadline", "0s", *files[:3]],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert text.returncode == 1 and "not attempted (deadline reached)" in text.stderr
    assert "re-run to converge" in text.stderr
