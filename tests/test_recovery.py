"""Issue 11: the pure decisions behind recovery (injected clock and RNG, no server) and the
config checks that keep faults out (rotation lengths, one writer per file)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from vaultsync import config, migrate, recovery
from vaultsync.errors import ConfigError


def test_reachability_reports_each_edge_once():
    r = recovery.Reachability()
    assert r.observe(200) is None
    assert r.observe(None) == "down"  # no answer
    assert r.observe(503) is None  # still down (sealed)
    assert r.observe(None) is None
    assert r.observe(403) == "back"  # any answer that is not an outage: it is back
    assert r.observe(200) is None
    assert r.observe(500) is None, "an engine's 500 is not an outage"


def test_throttle_lets_one_event_through_per_period():
    t = recovery.Throttle(60)
    assert t.allow(0) and not t.allow(30) and not t.allow(59.9) and t.allow(60) and not t.allow(100)
    t.reset()
    assert t.allow(101)


@pytest.mark.parametrize("error,verdict", [
    ("permission denied: look up the token (check the token's policies)", "dead"),
    ("renew the token: invalid token", "dead"),
    ("request timed out: look up the token", "unknown"),
    ("server sealed or in standby: look up the token", "unknown"),
    ("cannot reach the server: look up the token", "unknown"),
])
def test_token_verdict(error, verdict):
    assert recovery.token_verdict(error) == verdict


def test_lease_gone():
    assert recovery.lease_gone("renew lease of api/db: lease not found")
    assert recovery.lease_gone("renew lease of api/db: invalid lease ID")
    assert not recovery.lease_gone("request timed out: renew lease of api/db")


def test_crash_backoff_grows_caps_and_forgets_after_success():
    c = recovery.CrashBackoff(1.0, 8.0)
    rng = random.Random(1)
    delays = [c.crashed("kv:a", rng) for _ in range(6)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and all(4 <= d <= 8 for d in delays[3:])
    c.succeeded("kv:a")
    assert c.crashed("kv:a", rng) <= 1


def test_missing_source_delay_backs_off_from_the_poll_interval_up_to_a_minute():
    rng = random.Random(2)
    delays = [recovery.missing_source_delay(a, 0.5, rng) for a in range(12)]
    assert all(0.5 <= d <= 60 for d in delays) and delays[-1] >= 30
    assert recovery.missing_source_delay(0, 120, rng) == 120  # never more often than the poll interval


def test_migrate_why_not_start():
    assert migrate.why_not_start(1.0, 2.0, True) is None
    assert migrate.why_not_start(2.0, 2.0, True) == "deadline reached"
    assert migrate.why_not_start(1.0, None, False) == "the server stopped answering"


def load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "vaultsync.toml"
    path.write_text(text)
    return config.load(path, env={})


@pytest.mark.parametrize("generator,short,ok", [("hex", 15, 16), ("base64url", 8, 16), ("alphanumeric", 21, 22)])
def test_rotation_length_minimum_per_generator(tmp_path, generator, short, ok):
    body = '[services.api]\n[[services.api.rotate]]\nkey = "K"\ngenerator = "{g}"\nlength = {n}\n'
    with pytest.raises(ConfigError) as err:
        load(tmp_path, body.format(g=generator, n=short))
    assert f"services.api.rotate[0].length must be at least {ok}" in str(err.value) and "vaultsync.toml" in str(err.value)
    assert load(tmp_path, body.format(g=generator, n=ok)).services["api"].rotate[0].length == ok


def test_a_file_written_by_two_services_is_an_error(tmp_path):
    text = ('[services.a]\n[[services.a.destinations]]\npath = "shared.env"\n'
            '[services.b]\n[[services.b.destinations]]\npath = "./shared.env"\n')
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert "also written by services.a" in str(err.value) and "vaultsync.toml" in str(err.value)


def test_on_delete_must_be_keep_or_empty(tmp_path):
    with pytest.raises(ConfigError, match="on_delete must be"):
        load(tmp_path, '[services.api]\non_delete = "blank"\n')
    assert load(tmp_path, '[services.api]\non_delete = "empty"\n').services["api"].on_delete == "empty"


def test_a_hook_run_coalesced_behind_a_running_one_runs_the_latest_submission():
    """A change (or a reload that changed the command) arriving while a destination's hook runs
    got one more run of the *first* submission: the old command ran again."""
    import threading

    from vaultsync.hookrunner import HookRunner

    runner, release, ran = HookRunner(2), threading.Event(), []
    runner.submit("d", lambda: (ran.append("old"), release.wait(10)))
    runner.submit("d", lambda: ran.append("newer"))
    runner.submit("d", lambda: ran.append("newest"))  # coalesced: one more run, the latest one
    release.set()
    runner.drain(10)
    runner.shutdown()
    assert ran == ["old", "newest"]
