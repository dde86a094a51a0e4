"""Outside tester's config findings: integer modes (1), path aliases (2), policy globs (13),
poll_interval's floor (16), the wait hint (17c), owners and hook programs checked up front (17i, 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultsync import config, config_checks
from vaultsync.errors import EXIT_BAD_INPUT, ConfigError

DEST = '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n'


def load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "vaultsync.toml"
    path.write_text(text)
    return config.load(path, env={})


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert str(tmp_path / "vaultsync.toml") in str(err.value)
    return str(err.value)


# --- 1. integer mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [444, 400, 440, 420, 600, 644, 0])
def test_every_unquoted_integer_mode_is_refused_naming_the_key(tmp_path, mode):
    message = refused(tmp_path, DEST + f"mode = {mode}\n")
    assert "services.api.destinations[0].mode" in message and "quoted" in message


def test_quoted_octal_mode_still_works(tmp_path):
    assert load(tmp_path, DEST + 'mode = "0440"\n').services["api"].destinations[0].mode == 0o440


# --- 2. one file, one writer, by real path -----------------------------------------------------


def test_two_services_writing_one_file_through_a_symlinked_folder_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x-link").symlink_to(tmp_path / "x")
    message = refused(tmp_path, '[services.a]\n[[services.a.destinations]]\npath = "x/app.env"\n'
                                '[services.b]\n[[services.b.destinations]]\npath = "x-link/app.env"\n')
    assert "services.b" in message and "services.a" in message and "one writer" in message


def test_one_service_writing_one_file_under_two_spellings_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    message = refused(tmp_path, f'[services.a]\n[[services.a.destinations]]\npath = "{tmp_path}/x/y.env"\n'
                                f'[[services.a.destinations]]\npath = "{tmp_path}/x/./y.env"\n')
    assert "same file" in message and "services.a" in message


def test_a_destination_that_is_a_symlink_to_another_destination_is_refused(tmp_path):
    (tmp_path / "real.env").write_text("")
    (tmp_path / "alias.env").symlink_to(tmp_path / "real.env")
    refused(tmp_path, '[services.a]\n[[services.a.destinations]]\npath = "real.env"\n'
                      '[services.b]\n[[services.b.destinations]]\npath = "alias.env"\n')


def test_distinct_files_in_a_symlinked_folder_are_fine(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x-link").symlink_to(tmp_path / "x")
    s = load(tmp_path, '[services.a]\n[[services.a.destinations]]\npath = "x/a.env"\n'
                       '[services.b]\n[[services.b.destinations]]\npath = "x-link/b.env"\n')
    assert s.services["b"].destinations[0].path == str(tmp_path / "x-link" / "b.env"), "the label stays as configured"


# --- 13. policy glob characters -----------------------------------------------------------------


@pytest.mark.parametrize("body,key", [
    ('[services.api]\nkv_path = "compose/*"\n', "services.api.kv_path"),
    ('[services.api]\nkv_path = "compose/+/api"\n', "services.api.kv_path"),
    ('[services.api]\nkv_path = "api*"\n', "services.api.kv_path"),
    ('[services.api]\ndynamic = { db = "database/creds/*" }\n', "services.api.dynamic.db"),
    ('[services.api]\ndynamic = { db = "database/+/api" }\n', "services.api.dynamic.db"),
])
def test_policy_glob_characters_in_secret_paths_are_refused(tmp_path, body, key):
    message = refused(tmp_path, body)
    assert key in message and "glob" in message


# --- 16. poll_interval floor ---------------------------------------------------------------------


@pytest.mark.parametrize("poll", ["1ms", "0.5s", "999ms"])
def test_poll_interval_below_one_second_is_refused(tmp_path, poll):
    assert "daemon.poll_interval must be at least 1s" in refused(tmp_path, f'[daemon]\npoll_interval = "{poll}"\n')


def test_poll_interval_of_one_second_is_accepted(tmp_path):
    assert load(tmp_path, '[daemon]\npoll_interval = "1s"\n').daemon.poll_interval == 1.0


# --- 17c. the wait hint ---------------------------------------------------------------------------


def test_unknown_destination_key_hint_offers_wait_not_its_internal_halves(tmp_path):
    message = refused(tmp_path, DEST + 'wiat = "2s"\n')
    assert "wait" in message and "wait_min" not in message and "wait_max" not in message


def test_wait_min_written_as_a_key_is_unknown_and_points_at_wait(tmp_path):
    message = refused(tmp_path, DEST + 'wait_min = "2s"\n')
    assert "unknown setting services.api.destinations[0].wait_min" in message
    assert "wait = { min =" in message


# --- 17i. owner and group ----------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["owner = -1", "group = -1", 'owner = "-5"'])
def test_negative_owner_or_group_ids_are_refused(tmp_path, line):
    assert "an id of 0 or more" in refused(tmp_path, DEST + line + "\n")


def test_unknown_owner_or_group_is_a_config_error_where_files_are_written(tmp_path):
    s = load(tmp_path, DEST + 'owner = "no-such-user-xyz"\n')  # loads (policies apply runs elsewhere)
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.owner: no user named 'no-such-user-xyz'") as err:
        config_checks.check_for_writing(s)
    assert err.value.exit_code == EXIT_BAD_INPUT
    s = load(tmp_path, DEST + 'group = "no-such-group-xyz"\n')
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.group: no group named"):
        config_checks.check_for_writing(s)
    config_checks.check_for_writing(load(tmp_path, DEST + 'owner = "root"\ngroup = 0\n'))


def test_render_with_an_unknown_owner_exits_2_and_leaves_the_file(tmp_path, kv2, root, cli):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    (tmp_path / "api.env").write_text("A='previous'\n")
    cfg = tmp_path / "vaultsync.toml"
    cfg.write_text(f'[kv]\nmount = "{kv2}"\nversion = 2\n' + DEST + 'owner = "no-such-user-xyz"\n')
    res = cli("--config", str(cfg), "render")
    assert res.code == EXIT_BAD_INPUT, res.output
    assert "no user named 'no-such-user-xyz'" in res.output
    assert (tmp_path / "api.env").read_text() == "A='previous'\n"


# --- 10. an absolute hook program must exist and be executable ---------------------------------------


def test_missing_or_not_executable_absolute_hook_program_is_a_config_error(tmp_path):
    s = load(tmp_path, DEST + f'command = ["{tmp_path}/no-such-hook"]\n')
    with pytest.raises(ConfigError, match="no-such-hook does not exist"):
        config_checks.check_for_writing(s)
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o644)
    s = load(tmp_path, DEST + f'command = ["{hook}"]\n')
    with pytest.raises(ConfigError, match="is not executable"):
        config_checks.check_for_writing(s)
    hook.chmod(0o755)
    config_checks.check_for_writing(s)
    config_checks.check_for_writing(load(tmp_path, DEST + 'command = ["docker", "compose", "up"]\n'))


# --- 8. SIGHUP and start-only [daemon] settings -------------------------------------------------------


def test_start_only_daemon_settings_are_reported_when_they_change():
    old = config.DaemonSettings()
    assert config_checks.start_only_changes(old, config.DaemonSettings(poll_interval=5)) == []
    new = config.DaemonSettings(metrics_addr="127.0.0.1:9999", status_token_file="/etc/vaultsync/status.token")
    assert config_checks.start_only_changes(old, new) == ["metrics_addr", "status_token_file"]


def test_a_reload_that_makes_two_destinations_one_file_is_refused(tmp_path):
    from vaultsync.daemon import Daemon

    (tmp_path / "x").mkdir()
    (tmp_path / "x-link").symlink_to(tmp_path / "x")
    one = '[daemon]\nmetrics_addr = ""\n[services.a]\n[[services.a.destinations]]\npath = "x/app.env"\n'
    settings = load(tmp_path, one)
    d = Daemon(settings, config_path=str(tmp_path / "vaultsync.toml"), serve_http=False)  # never started: no server
    (tmp_path / "vaultsync.toml").write_text(one + '[services.b]\n[[services.b.destinations]]\npath = "x-link/app.env"\n')
    d.reload()
    assert d.settings is settings, "the running config was replaced by one with two writers of one file"
