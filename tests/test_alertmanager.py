"""The stack's Alertmanager config, for real: amtool accepts it once run.sh has filled it in,
and a running Alertmanager routes, groups and inhibits as the config says.

Needs Debian's `prometheus-alertmanager` (Makefile: system-deps)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alerting import AM_DIR, Alertmanager, WebhookSink, start_alertmanager

pytestmark = pytest.mark.prometheus


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: WebhookSink) -> Iterator[Alertmanager]:
    am = start_alertmanager(tmp_path, webhook)
    yield am
    am.stop()


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if not binary:
        pytest.fail("amtool not found: install Debian package prometheus-alertmanager", pytrace=False)
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_filled_config_passes_amtool_and_keeps_urls_private(alertmanager: Alertmanager, webhook: WebhookSink) -> None:
    filled = alertmanager.data / "alertmanager.yml"
    text = filled.read_text()
    assert f"{webhook.url}/critical" in text and f"{webhook.url}/warning" in text and "${" not in text
    assert stat.S_IMODE(filled.stat().st_mode) == 0o600
    proc = amtool("check-config", filled)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 receivers" in proc.stdout and "1 inhibit rules" in proc.stdout


def test_unfilled_template_is_refused_by_amtool() -> None:
    """The placeholders are not URLs: the template is never usable as it is (run.sh must fill it)."""
    proc = amtool("check-config", AM_DIR / "alertmanager.yml")
    assert proc.returncode != 0


def test_run_sh_refuses_to_start_without_the_urls(tmp_path: Path) -> None:
    proc = subprocess.run(["/bin/sh", str(AM_DIR / "run.sh")], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "ALERTMANAGER_DATA": str(tmp_path)})
    assert proc.returncode != 0 and "ALERTMANAGER_CRITICAL_WEBHOOK_URL" in proc.stderr
    assert not (tmp_path / "alertmanager.yml").exists()


def _alert(name: str, severity: str, instance: str, **labels: str) -> dict:
    return {"labels": {"alertname": name, "severity": severity, "instance": instance, "job": "vaultsync", **labels},
            "annotations": {"summary": name, "runbook_url": f"docs/runbook.md#{name.lower()}"}}


def test_routes_by_severity_groups_by_service_and_inhibits_during_an_outage(alertmanager: Alertmanager, webhook: WebhookSink) -> None:
    alertmanager.post_alerts([
        # one service, two stalled leases: one critical page for both
        _alert("VaultsyncLeaseExpiringSoon", "critical", "a:9464", service="api", secret="db"),
        _alert("VaultsyncLeaseExpiringSoon", "critical", "a:9464", service="api", secret="cache"),
        # a warning goes to the other receiver
        _alert("VaultsyncLeaseRenewalOverdue", "warning", "a:9464", service="web", secret="db"),
        # daemon b cannot reach the server: its lease page is held back, the outage pages
        _alert("VaultsyncVaultUnreachable", "critical", "b:9464"),
        _alert("VaultsyncLeaseExpiringSoon", "critical", "b:9464", service="billing", secret="db"),
    ])
    webhook.wait_for("critical", "VaultsyncVaultUnreachable", timeout=60)
    page, _ = webhook.wait_for("critical", "VaultsyncLeaseExpiringSoon", timeout=60)
    assert page.body["groupLabels"] == {"service": "api"}
    assert sorted(a["labels"]["secret"] for a in page.alerts()) == ["cache", "db"]
    webhook.wait_for("warning", "VaultsyncLeaseRenewalOverdue", timeout=90)
    assert not webhook.received("critical", "VaultsyncLeaseRenewalOverdue")
    time.sleep(2)  # anything else routed with the same group_wait has arrived by now
    billing = [a for _, a in webhook.received() if a["labels"].get("service") == "billing"]
    assert billing == [], "a lease alert of a daemon that cannot reach the server was not inhibited"
    inhibited = [a for a in alertmanager.alerts() if a["labels"].get("service") == "billing"]
    assert inhibited and inhibited[0]["status"]["inhibitedBy"], inhibited
