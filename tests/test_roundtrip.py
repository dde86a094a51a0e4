"""Real public projects' .env examples (tests/corpus, sources in tests/corpus/SOURCES.md) and
hand-written nasty cases: migrate -> Vault -> render in every style -> parse back with the real
consumer -> equal to what Vault holds. Plus a Hypothesis property test per style, `vaultsync
export`, and `render` failing on a missing source."""

from __future__ import annotations

import json
import os
import stat
import string
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import readers
from tests.test_daemon import config
from vaultsync import quoting
from vaultsync.formats import GENERATED, HEADER, render, refusal

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CORPUS_FILES = sorted(CORPUS_DIR.glob("*.env"))
SHELLS = [a for a in readers.SHELLS]


@pytest.fixture(scope="module")
def envcheck():
    return readers.Envcheck(readers.build_envcheck())


def consumer_reads(style: str, text: str, folder: Path, envcheck: readers.Envcheck) -> list[dict]:
    """What every real consumer of ``style`` parses out of ``text`` (one dict per consumer)."""
    if style == "dotenv":
        return [{k: v for k, v in r.items()} for r in readers.read_dotenv(text, folder)]
    if style in ("compose", "docker"):
        got = envcheck.read(style, text)
        assert got is not None, f"{style} refused the rendered file"
        return [got]
    if style == "shell":
        reads = []
        for argv in SHELLS:
            env = readers.read_shell(argv, text, folder)
            reads.append({k: v for k, v in env.items() if k not in readers.SHELL_OWN})
        return reads
    if style == "systemd":
        return [readers.read_systemd(text)]
    if style == "json":
        return [json.loads(text)]
    raise AssertionError(style)


def carried(style: str, data: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what the style carries, {key: reason} it refuses or leaves out)."""
    keep, refused = {}, {}
    for key, value in data.items():
        why = refusal(style, key, value)
        if why is None and style == "shell" and quoting.bash_reserved(key):
            why = "bash reserves this name"
        if why is None:
            keep[key] = value
        else:
            refused[key] = why
    return keep, refused


def test_corpus_survives_migrate_render_and_every_consumer(kv2, root, cli, tmp_path, envcheck, monkeypatch):
    for name in ("HOME", "APP_URL", "DB_USER", "DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    stats = {style: {"carried": 0, "refused": 0} for style in GENERATED}
    keys_total = 0
    for path in CORPUS_FILES:
        service = path.stem.replace("_", "-")
        res = cli("migrate", "--mount", kv2, "--path", f"corpus/{service}", str(path))
        assert res.code == 0, res.output
        held = root.secrets.kv.v2.read_secret_version(path=f"corpus/{service}", mount_point=kv2,
                                                      raise_on_deleted_version=True)["data"]["data"]
        assert held == dotenv_values(path, interpolate=False), path.name  # migrate stores what python-dotenv reads
        keys_total += len(held)
        for style in GENERATED:
            keep, refused = carried(style, held)
            stats[style]["carried"] += len(keep)
            stats[style]["refused"] += len(refused)
            text = render(style, keep, destination=f"{path.name}.{style}")
            for got in consumer_reads(style, text, tmp_path, envcheck):
                assert got == keep, (path.name, style)
    # The numbers the README quotes (`pytest -s` shows them).
    print(f"\ncorpus: {len(CORPUS_FILES)} files, {keys_total} keys; per style carried/refused: {json.dumps(stats)}")
    assert len(CORPUS_FILES) >= 9 and keys_total >= 300
    for style in ("dotenv", "compose", "json"):
        assert stats[style]["refused"] == 0, style
    assert stats["docker"]["refused"] == 3  # nasty-handwritten.env: TLS_KEY, MULTILINE, CR_ONLY (line breaks)


def test_migrate_warns_at_plan_time_about_what_styles_cannot_carry(kv2, cli):
    res = cli("migrate", "--mount", kv2, "--path", "corpus/nasty", "--dry-run", str(CORPUS_DIR / "nasty-handwritten.env"))
    assert res.code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert any("docker style cannot carry" in w and "TLS_KEY" in w and "line break" in w for w in warnings), warnings
    assert any("shell style cannot carry" in w and "UID" in w and "bash reserves" in w for w in warnings), warnings
    assert any("systemd style cannot carry" in w and "NODE-ENV" in w for w in warnings), warnings
    assert "BEGIN PRIVATE KEY" not in res.stderr


def test_migrate_interpolates_from_the_file_only(kv2, root, cli, tmp_path):
    env_file = tmp_path / "app" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("BASE=https://example.com\nAPI=${BASE}/api\nLEAK=${VAULT_TOKEN}\n")
    res = cli("migrate", "--mount", kv2, "--interpolate", str(env_file))
    assert res.code == 2 and f"{env_file}:3: LEAK refers to ${{VAULT_TOKEN}}" in res.stderr
    token = root.token
    assert token not in res.output
    env_file.write_text("BASE=https://example.com\nAPI=${BASE}/api\nHOST=${MY_HOST}\n")
    res = cli("migrate", "--mount", kv2, "--interpolate", "--interpolate-env", "MY_HOST", str(env_file),
              env={"MY_HOST": "db.local"})
    assert res.code == 0, res.output
    held = root.secrets.kv.v2.read_secret_version(path="compose/app", mount_point=kv2, raise_on_deleted_version=True)
    assert held["data"]["data"] == {"BASE": "https://example.com", "API": "https://example.com/api", "HOST": "db.local"}
    assert cli("migrate", "--mount", kv2, "--interpolate-env", "X", str(env_file)).code == 2


# --- Hypothesis: random keys and values, every style, its real consumer -------------------------

_ENV_KEYS = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=12)
_SHELL_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True).filter(lambda k: not quoting.bash_reserved(k))
_VALUES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
_INTERESTING = st.sampled_from(["$", "${", "}", "'", '"', "\\", "\n", "\r", "\r\n", " ", "\t", "#", "=", "`", "${A}",
                                "${:-$}", "$$", "\\'", " #", "é", "\u2028", "\x85", "\xa0"])
_NASTY_VALUES = st.lists(st.one_of(_VALUES, _INTERESTING), max_size=8).map("".join)

_PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _keys_for(style: str):
    if style in ("shell", "systemd"):
        # ...and not names a shell sets by itself for the consumer
        return _SHELL_KEYS.filter(lambda k: k not in readers.SHELL_OWN and k not in ("PATH", "ENV", "IFS", "BASH"))
    if style == "json":
        return st.text(min_size=1, max_size=12).filter(lambda k: "\x00" not in k and not any(0xD800 <= ord(c) <= 0xDFFF for c in k))
    return _ENV_KEYS


@pytest.mark.parametrize("style", GENERATED)
def test_property_random_secrets_read_back_exactly(style, tmp_path, envcheck, monkeypatch):
    monkeypatch.delenv("A", raising=False)

    @_PROPERTY
    @given(st.dictionaries(_keys_for(style), _NASTY_VALUES, max_size=6))
    def check(values):
        if style == "docker":
            values = {k: v for k, v in values.items() if "\n" not in v and "\r" not in v}
        text = render(style, values, destination="prop")
        for got in consumer_reads(style, text, tmp_path, envcheck):
            assert got == values

    check()


# --- export ----------------------------------------------------------------------------------


def test_export_is_the_inverse_of_migrate(kv2, root, cli, tmp_path):
    source = CORPUS_DIR / "nasty-handwritten.env"
    assert cli("migrate", "--mount", kv2, "--path", "svc/app", str(source)).code == 0
    out = tmp_path / "deep" / "exported.env"
    res = cli("export", "--mount", kv2, "svc/app", "--out", str(out))
    assert res.code == 0, res.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert dict(dotenv_values(out)) == dict(dotenv_values(source, interpolate=False))
    shell = cli("export", "--mount", kv2, "svc/app", "--style", "shell", "--stdout")
    assert shell.code == 2 and "'NODE-ENV'" in shell.stderr and shell.stdout == ""
    root.secrets.kv.v2.create_or_update_secret(path="svc/ids", secret={"UID": "1000", "A": "x y"}, mount_point=kv2)
    again = cli("export", "--mount", kv2, "svc/ids", "--style", "shell", "--stdout")
    assert again.code == 0 and again.stdout == "export A='x y'\n# UID is not set here: bash reserves this name\n"
    assert "warning:" in again.stderr and "'UID'" in again.stderr
    refused = cli("export", "--mount", kv2, "svc/app", "--style", "docker", "--stdout")
    assert refused.code == 2 and "CR_ONLY" in refused.stderr and "line break" in refused.stderr
    assert "BEGIN" not in refused.stderr


def test_export_missing_secret_and_flag_misuse(kv2, cli, tmp_path):
    res = cli("export", "--mount", kv2, "no/such", "--stdout")
    assert res.code == 1 and f"{kv2}/no/such does not exist" in res.stderr
    both = cli("export", "--mount", kv2, "x", "--stdout", "--out", str(tmp_path / "f"))
    assert both.code == 2


def test_export_never_clobbers_or_follows_a_link_and_fails_cleanly(kv2, root, cli, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="svc/out", secret={"A": "SECRETVALUE"}, mount_point=kv2)
    mine = tmp_path / "mine.env"
    mine.write_text("HAND=edited\n")
    kept = cli("export", "--mount", kv2, "svc/out", "--out", str(mine))
    assert kept.code == 2 and "--force" in kept.stderr and mine.read_text() == "HAND=edited\n"
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    link = tmp_path / "planted.env"
    link.symlink_to(victim)
    forced = cli("export", "--mount", kv2, "svc/out", "--out", str(link), "--force")
    assert forced.code == 0, forced.output
    assert victim.read_text() == "not yours\n" and not link.is_symlink()
    assert stat.S_IMODE(os.stat(link).st_mode) == 0o600 and dotenv_values(link) == {"A": "SECRETVALUE"}
    blocked = cli("export", "--mount", kv2, "svc/out", "--out", str(victim / "x.env"))  # a file where a folder should be
    assert blocked.code == 1 and "error: " in blocked.stderr and "Traceback" not in blocked.stderr
    assert "SECRETVALUE" not in blocked.output


# --- a missing source fails the render -----------------------------------------------------------


def test_render_fails_on_missing_source_unless_optional(kv2, root, cli, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "1"}, mount_point=kv2)
    (tmp_path / "ghost.env").write_text("OLD=kept\n")
    cfg = config(tmp_path, kv2, (
        '[services.api]\n[[services.api.destinations]]\npath = "api.env"\n'
        '[services.ghost]\n[[services.ghost.destinations]]\npath = "ghost.env"\n'
    ))
    res = cli("--config", str(cfg), "render")
    assert res.code == 1, res.output
    assert "service ghost" in res.stderr and f"{kv2}/compose/ghost does not exist" in res.stderr
    assert (tmp_path / "ghost.env").read_text() == "OLD=kept\n"  # the previous file is left alone
    assert (tmp_path / "api.env").exists()  # the other service is still rendered
    cfg.write_text(cfg.read_text().replace("[services.ghost]\n", "[services.ghost]\noptional = true\n"))
    res = cli("--config", str(cfg), "render")
    assert res.code == 0, res.output
    assert (tmp_path / "ghost.env").read_text() == HEADER  # rendered empty, as asked


def test_export_refuses_a_terminal_without_stdout_flag(kv2, root, vault_env, tmp_path):
    import pty
    import subprocess
    import sys

    root.secrets.kv.v2.create_or_update_secret(path="svc/tty", secret={"A": "SECRETVALUE"}, mount_point=kv2)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "vaultsync", "export", "--mount", kv2, "svc/tty"], env=vault_env,
                              stdout=follower, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 2 and "refusing to print secrets to a terminal" in proc.stderr
    assert b"SECRETVALUE" not in shown
