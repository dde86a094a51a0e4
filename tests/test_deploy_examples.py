"""Issue 13: the example deployments beside the compose stack are checked by real parsers:
systemd's own (`systemd-analyze verify`, Debian's systemd) for the unit, the Kubernetes JSON
schemas (kubernetes-validate, strict: unknown fields are errors) for the manifest, and vaultsync's
config loader for the config the manifest embeds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT
from vaultsync import config

UNIT = ROOT / "deploy" / "systemd" / "vaultsync.service"
MANIFEST = ROOT / "deploy" / "kubernetes" / "vaultsync-sidecar.yaml"


def _verify_unit(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make system-deps` installs Debian's systemd"
    # verify checks that ExecStart's program exists: point it at this checkout's entry point.
    unit = tmp_path / "vaultsync.service"
    unit.write_text(text.replace("/usr/local/bin/vaultsync", str(Path(sys.executable).parent / "vaultsync")))
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_the_systemd_unit_verifies_without_a_warning(tmp_path):
    text = UNIT.read_text()
    for option in ("EnvironmentFile=", "NoNewPrivileges=yes", "ProtectSystem=strict", "UMask=0077", "LimitCORE=0"):
        assert option in text
    res = _verify_unit(text, tmp_path)
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", res.stdout + res.stderr


def test_the_unit_check_catches_a_misspelled_option(tmp_path):
    res = _verify_unit(UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes"), tmp_path)
    assert "Unknown key" in res.stderr


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run([str(tool), "--strict", "--kubernetes-version", "1.31.0", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_the_kubernetes_manifest_validates_strictly_and_embeds_a_valid_config(tmp_path):
    res = _validate(MANIFEST)
    assert res.returncode == 0 and "ERROR" not in res.stdout + res.stderr, res.stdout + res.stderr
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment"}
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["vaultsync.toml"])
    settings = config.load(cfg)
    assert settings.auth.method == "approle" and "app" in settings.services
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "vaultsync")
    assert sidecar["restartPolicy"] == "Always" and sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_the_manifest_check_catches_an_unknown_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.read_text().replace("image:", "imagee:", 1))
    res = _validate(bad)
    assert res.returncode != 0 and "imagee" in res.stdout + res.stderr
