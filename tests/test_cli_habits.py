"""Issue 13: the command line fits the habits of Vault CLI / terraform users: global options before
or after the subcommand, -a/--address, --token-file, --format json, Examples in every help, bare
`vaultsync` prints help, one error line per error."""

from __future__ import annotations

import json
import uuid

import click
import pytest

from vaultsync import cli as cli_module
from vaultsync import cli_support

ARITY = {"--config": True, "-a": True, "--address": True, "--tls-skip-verify": False, "--log-level": True}
COMMANDS = {"daemon", "migrate", "policies"}


@pytest.mark.parametrize("argv, expected", [
    (["daemon", "--config", "x.toml"], ["--config", "x.toml", "daemon"]),
    (["daemon", "--config=x.toml"], ["--config=x.toml", "daemon"]),
    (["policies", "apply", "-a", "http://h:1", "pol/", "--tls-skip-verify"],
     ["-a", "http://h:1", "--tls-skip-verify", "policies", "apply", "pol/"]),
    (["--config", "migrate", "migrate", "a.env"], ["--config", "migrate", "migrate", "a.env"]),  # a value named like a command
    (["migrate", "--", "--config"], ["migrate", "--", "--config"]),
    (["--log-level", "debug", "migrate", "x"], ["--log-level", "debug", "migrate", "x"]),
    (["unknown", "--config", "x"], ["unknown", "--config", "x"]),
])
def test_global_options_are_hoisted_in_front_of_the_subcommand(argv, expected):
    assert cli_support.hoist_global_options(argv, ARITY, COMMANDS) == expected


def test_go_style_single_dash_flags_are_understood():
    names = cli_support.long_option_names(cli_module.main)
    assert {"--format", "--address", "--dry-run", "--config"} <= names
    argv = ["-address=http://h:1", "migrate", "-format=json", "-dry-run", "-v", "-y", "a.env", "--", "-format=x"]
    assert cli_support.go_style_flags(argv, names) == [
        "--address=http://h:1", "migrate", "--format=json", "--dry-run", "-v", "-y", "a.env", "--", "-format=x"]


def test_a_passthrough_command_keeps_its_arguments(monkeypatch):
    """A command that runs a child program (allow_interspersed_args=False) gets its arguments as
    given: `--config` or `-format=json` after it belong to the child."""
    seen = {}

    @cli_module.main.command("probe-passthrough", context_settings={"allow_interspersed_args": False,
                                                                     "ignore_unknown_options": True})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    def probe(state, argv):
        seen["argv"], seen["config"] = argv, state.config_path

    try:
        from click.testing import CliRunner

        res = CliRunner().invoke(cli_module.main, ["--config", "a.toml", "probe-passthrough", "cmd", "--config", "b", "-format=json"])
        assert res.exit_code == 0, res.output
        assert seen == {"argv": ("cmd", "--config", "b", "-format=json"), "config": "a.toml"}
    finally:
        del cli_module.main.commands["probe-passthrough"]


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


def test_every_command_has_examples_in_its_help():
    missing = [" ".join(path) for path, command in _all_commands(cli_module.main) if "Examples:" not in (command.epilog or "")]
    assert missing == []
    assert "Examples:" in (cli_module.main.epilog or "")


def test_bare_vaultsync_prints_help_and_exits_0(cli):
    res = cli()
    assert res.code == 0, res.output
    assert "Usage:" in res.stdout and "Examples:" in res.stdout and "migrate" in res.stdout


@pytest.mark.parametrize("group", ["dev", "policies", "approle"])
def test_a_bare_command_group_prints_its_help_and_exits_0(cli, group):
    res = cli(group)
    assert res.code == 0 and "Usage:" in res.stdout and "Examples:" in res.stdout, res.output


def test_subcommand_help_shows_examples(cli):
    res = cli("migrate", "--help")
    assert res.code == 0 and "Examples:" in res.stdout and "--detailed-exitcode" in res.stdout


@pytest.mark.parametrize("command", [["status"], ["policies", "apply"], ["approle", "credentials", "x", "--stdout"]])
def test_config_after_the_subcommand_is_read(cli, tmp_path, command):
    res = cli(*command, "--config", str(tmp_path / "nope.toml"))
    assert res.code == 2 and "nope.toml: config file not found" in res.stderr, res.output


def test_address_alias_and_format_alias(cli, tmp_path, kv2):
    env_file = tmp_path / "svc" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("A=1\n")
    res = cli("migrate", str(env_file), "--mount", kv2, "-dry-run", "-format=json", "-a", "http://127.0.0.1:9")
    assert res.code == 1 and "127.0.0.1:9" in res.stderr, res.output  # -a after the command reached the client
    ok = cli("migrate", str(env_file), "--mount", kv2, "--dry-run", "--format", "json")
    assert ok.code == 0, ok.output
    assert json.loads(ok.stdout)["plan"]["secrets"][0]["path"] == "compose/svc"


def test_token_file_wins_over_the_environment_and_token_on_argv_is_refused(cli, vault_server, tmp_path, kv2):
    env_file = tmp_path / "svc" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("A=1\n")
    token_file = tmp_path / "token"
    token_file.write_text(vault_server.token + "\n")
    bogus = {"VAULT_TOKEN": "not-a-token-" + uuid.uuid4().hex}
    denied = cli("migrate", str(env_file), "--mount", kv2, "--dry-run", env=bogus)
    assert denied.code != 0
    res = cli("migrate", str(env_file), "--mount", kv2, "--dry-run", "--token-file", str(token_file), env=bogus)
    assert res.code == 0, res.output
    refused = cli("migrate", str(env_file), "--token", vault_server.token)
    assert refused.code == 2 and "--token is not accepted" in refused.stderr
    assert vault_server.token not in refused.output


def test_each_error_is_printed_once_on_a_console(cli, tmp_path):
    res = cli("--log-format", "console", "status", "--config", str(tmp_path / "nope.toml"))
    assert res.code == 2
    assert res.stderr.count("config file not found") == 1, res.stderr
    # JSON mode (not a terminal): one record for the collector, one line for the person.
    res = cli("status", "--config", str(tmp_path / "nope.toml"))
    lines = res.stderr.splitlines()
    assert [json.loads(x)["event"] for x in lines if x.startswith("{")] == ["command failed"]
    assert [x for x in lines if x.startswith("error:")] == [f"error: {tmp_path / 'nope.toml'}: config file not found"]


@pytest.mark.parametrize("requested, tty, env, expected", [
    (None, True, {}, "console"), (None, False, {}, "json"), ("json", True, {}, "json"),
    (None, True, {"VAULTSYNC_LOG_FORMAT": "json"}, "json"), ("console", False, {}, "console"),
])
def test_log_format_follows_the_terminal(monkeypatch, requested, tty, env, expected):
    monkeypatch.delenv("VAULTSYNC_LOG_FORMAT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    class Stream:
        def isatty(self):
            return tty

    assert cli_support.log_format_for(requested, Stream()) == expected  # type: ignore[arg-type]


def test_a_bad_log_format_variable_is_bad_input(cli):
    res = cli("status", env={"VAULTSYNC_LOG_FORMAT": "xml"})
    assert res.code == 2 and "VAULTSYNC_LOG_FORMAT must be auto, json or console" in res.stderr, res.output


def test_no_color_turns_colour_off(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert cli_support.wants_colour(Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "")
    assert not cli_support.wants_colour(Tty())  # type: ignore[arg-type]
