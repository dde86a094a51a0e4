"""Settings: precedence, types, and clear errors for what would otherwise be silently misread."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultsync import config
from vaultsync.errors import EXIT_BAD_INPUT, ConfigError


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **overrides):
    path = tmp_path / "vaultsync.toml"
    path.write_text(text)
    return config.load(path, env=env or {}, overrides=overrides)


@pytest.mark.parametrize("text,message", [
    ('[services.api]\npolicies = "api-read"\n', "policies must be a list of strings"),
    ('[daemon]\nrevoke_on_exit = "false"\n', "revoke_on_exit must be true or false"),
    ('[auth]\nsecret_id_wrapped = "no"\n', "secret_id_wrapped must be true or false"),
    ('[services.api]\n[[services.api.destinations]]\npath = "x"\nwait = { minimum = "2s" }\n', "unknown setting services.api.destinations[0].wait.minimum"),
    ('[services.api]\n[[services.api.destinations]]\npath = "x"\nmode = 600\n', "mode must be a permission"),
    ('[services.api]\n[[services.api.destinations]]\npath = "x"\nsignal = "USR3"\n', "is not a signal name"),
    ('[services.api]\n[[services.api.destinations]]\npath = "x"\ncommand_timeout = 0\n', "command_timeout must be more than 0"),
    ('[daemon]\npoll_interval = "0s"\n', "poll_interval must be more than 0"),
    ('[services.api]\n[[services.api.rotate]]\nkey = "K"\nevery = 0\n', "every must be more than 0"),
    ('[services.Api]\n', "must be lower case"),
    ('[vault]\ntoken = "s.abc"\n', "may not be set in a file"),
    ('[vualt]\naddr = "x"\n', "unknown setting vualt"),
    ('[kv]\nversion = 3\n', "kv.version must be 1 or 2"),
    ('[daemon]\npoll_interval = "soon"\n', "daemon.poll_interval"),
])
def test_wrong_settings_are_errors_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert message in str(err.value) and str(tmp_path / "vaultsync.toml") in str(err.value)
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_precedence_flags_over_env_over_file_and_bao_aliases(tmp_path):
    text = '[vault]\naddr = "http://file:8200"\ntls_verify = false\n'
    assert load(tmp_path, text).vault.addr == "http://file:8200"
    assert load(tmp_path, text, env={"BAO_ADDR": "http://bao:8200"}).vault.addr == "http://bao:8200"
    both = {"BAO_ADDR": "http://bao:8200", "VAULT_ADDR": "http://vault:8200"}
    assert load(tmp_path, text, env=both).vault.addr == "http://vault:8200"
    assert load(tmp_path, text, env=both, **{"vault.addr": "http://flag:8200"}).vault.addr == "http://flag:8200"
    assert load(tmp_path, text).vault.tls_verify is False
    assert load(tmp_path, text, env={"VAULT_SKIP_VERIFY": "false"}).vault.tls_verify is True
    assert load(tmp_path, "", env={"BAO_SKIP_VERIFY": "true"}).vault.tls_verify is False
    assert load(tmp_path, "").vault.tls_verify is True
    assert load(tmp_path, "", env={"BAO_TOKEN": "t-1"}).vault.token == "t-1"


def test_files_named_in_the_config_are_relative_to_it(tmp_path):
    s = load(tmp_path, '[vault]\ntoken_file = "tok"\n[auth]\nrole_id_file = "creds/role_id"\n'
                       '[[migrate.sources]]\nfile = "api/.env"\n[services.api]\n[[services.api.destinations]]\npath = "out/api.env"\n')
    assert s.vault.token_file == str(tmp_path / "tok")
    assert s.auth.role_id_file == str(tmp_path / "creds" / "role_id")
    assert s.migrate.sources[0].file == str(tmp_path / "api" / ".env")
    assert s.services["api"].destinations[0].path == str(tmp_path / "out" / "api.env")
    assert s.services["api"].kv_path == "compose/api"


def test_missing_explicit_config_is_an_error_but_a_missing_default_is_not(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml", env={})
    monkeypatch.chdir(tmp_path)
    assert config.load(None, env={}).kv.mount == "secret"


def test_service_tables_may_not_rename_themselves_or_write_one_file_twice(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting services.api.name"):
        load(tmp_path, '[services.api]\nname = "Not Valid!"\n')
    with pytest.raises(ConfigError, match="two destinations write the same file"):
        load(tmp_path, '[services.api]\n[[services.api.destinations]]\npath = "a.env"\n[[services.api.destinations]]\npath = "a.env"\nstyle = "shell"\n')


def test_tls_settings_env_over_file_with_bao_aliases_and_relative_paths(tmp_path):
    text = ('[vault]\ncacert = "ca.pem"\nclient_cert = "c.pem"\nclient_key = "k.pem"\ntls_server_name = "file.test"\n')
    s = load(tmp_path, text).vault
    assert (s.cacert, s.client_cert, s.client_key, s.tls_server_name) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), "file.test")
    env = {"BAO_CLIENT_CERT": "/b/c.pem", "VAULT_CLIENT_KEY": "/v/k.pem", "BAO_TLS_SERVER_NAME": "bao.test"}
    s = load(tmp_path, text, env=env).vault
    assert (s.client_cert, s.client_key, s.tls_server_name) == ("/b/c.pem", "/v/k.pem", "bao.test")
    # a CA folder from the environment replaces the file's CA file (which would otherwise win)
    s = load(tmp_path, text, env={"VAULT_CAPATH": "/cas"}).vault
    assert (s.cacert, s.capath) == (None, "/cas")
    # both in one layer: the file wins over the folder, as in the Vault CLI
    s = load(tmp_path, "", env={"VAULT_CAPATH": "/cas", "VAULT_CACERT": "/ca.pem"}).vault
    assert (s.cacert, s.capath) == ("/ca.pem", "/cas")


def test_token_sources_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    vs = config.VaultSettings
    assert config.token_with_source(vs()) == (None, "none")
    (tmp_path / ".vault-token").write_text("from-login\n")
    assert config.token_with_source(vs()) == ("from-login", str(tmp_path / ".vault-token"))
    (tmp_path / "tf").write_text("from-file")
    assert config.token_with_source(vs(token_file=str(tmp_path / "tf")))[0] == "from-file"
    assert config.token_with_source(vs(token="from-env", token_file=str(tmp_path / "tf")))[0] == "from-env"
