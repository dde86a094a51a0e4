"""Issue 13: terraform-like plans (summary line, --summary, versioned JSON with each key's source,
--detailed-exitcode, `policies apply --dry-run` validating on the server) and migrate's inputs
(-, FILE:SERVICE, folders, globs, empty files, missing files, two files for one service)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


from tests.conftest import ROOT
from vaultsync import inputs


def env_file(tmp_path: Path, service: str, text: str, name: str = ".env") -> Path:
    path = tmp_path / service / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_plan_has_a_summary_line_and_json_has_sources_counts_and_a_version(cli, root, kv2, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "old", "GONE": "x", "SAME": "s"}, mount_point=kv2)
    api = env_file(tmp_path, "api", "A=new\nSAME=s\nB=added\n")
    web = env_file(tmp_path, "web", "W=1\n")
    res = cli("migrate", "--mount", kv2, "--dry-run", "--prune", str(api), str(web))
    assert res.code == 0, res.output
    assert "Plan: 2 to add, 1 to change, 1 to remove, 1 unchanged keys. 2 of 2 secrets to write." in res.stdout
    short = cli("migrate", "--mount", kv2, "--dry-run", "--prune", "--summary", str(api), str(web))
    assert "    ~ A" not in short.stdout and f"{kv2}/compose/api: +1 ~1 -1" in short.stdout
    doc = json.loads(cli("migrate", "--mount", kv2, "--dry-run", "--format", "json", str(api), str(web)).stdout)["plan"]
    assert doc["format_version"] == "1.0"
    assert doc["summary"] == {"add": 2, "change": 1, "remove": 0, "unchanged": 1, "only_in_vault": 1}
    api_doc = next(s for s in doc["secrets"] if s["path"] == "compose/api")
    assert api_doc["sources"] == [str(api)]
    assert {k["key"]: k["source"] for k in api_doc["keys"]} == {"A": f"{api}:1", "SAME": f"{api}:2", "B": f"{api}:3", "GONE": None}


def test_detailed_exitcode_tells_ci_whether_changes_are_pending(cli, kv2, tmp_path):
    api = env_file(tmp_path, "api", "A=1\n")
    pending = cli("migrate", "--mount", kv2, "--dry-run", "--detailed-exitcode", str(api))
    assert pending.code == 2, pending.output
    assert cli("migrate", "--mount", kv2, "--dry-run", str(api)).code == 0  # without the flag: 0 as before
    assert cli("migrate", "--mount", kv2, "--yes", str(api)).code == 0
    clean = cli("migrate", "--mount", kv2, "--dry-run", "--detailed-exitcode", str(api))
    assert clean.code == 0 and "No changes." in clean.stdout, clean.output
    assert "compose/api" not in clean.stdout and "1 secrets with nothing to write not shown" in clean.stdout
    assert "compose/api (version 1)" in cli("migrate", "--mount", kv2, "--dry-run", "-v", str(api)).stdout
    misuse = cli("migrate", "--mount", kv2, "--detailed-exitcode", str(api))
    assert misuse.code == 2 and "--detailed-exitcode goes with --dry-run" in misuse.stderr


def test_without_a_terminal_prune_never_prompts(cli, root, kv2, tmp_path):
    root.secrets.kv.v2.create_or_update_secret(path="compose/api", secret={"A": "old", "GONE": "x"}, mount_point=kv2)
    api = env_file(tmp_path, "api", "A=new\n")
    res = cli("migrate", "--mount", kv2, "--prune", str(api))
    assert res.code == 0 and "Enter a value" not in res.output, res.output
    got = root.secrets.kv.v2.read_secret_version(path="compose/api", mount_point=kv2, raise_on_deleted_version=True)
    assert got["data"]["data"] == {"A": "new"}


def test_stdin_with_service_file_service_pairs_folders_and_globs(vault_env, root, kv2, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vaultsync", "migrate", "--mount", kv2, "--service", "piped", "-"],
                          input="P=1\n", env=vault_env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tree = tmp_path / "services"
    env_file(tree, "a", "A=1\n")
    env_file(tree, "b", "B=1\n")
    extra = env_file(tmp_path, "a", "X=1\n", name=".env.prod")
    from tests.conftest import run_cli

    assert run_cli("migrate", "--mount", kv2, str(tree), f"{extra}:aprod", env=vault_env).code == 0
    assert run_cli("migrate", "--mount", kv2, "--prefix", "globbed", str(tree / "*" / ".env"), env=vault_env).code == 0
    listed = set(root.secrets.kv.v2.list_secrets(path="compose", mount_point=kv2)["data"]["keys"])
    assert {"piped", "a", "b", "aprod"} <= listed
    assert set(root.secrets.kv.v2.list_secrets(path="globbed", mount_point=kv2)["data"]["keys"]) == {"a", "b"}


def test_bad_inputs_are_named_clearly(cli, kv2, tmp_path):
    missing = cli("migrate", "--mount", kv2, str(tmp_path / "nope" / ".env"))
    assert missing.code == 2 and f"{tmp_path / 'nope' / '.env'}: no such file" in missing.stderr
    assert ":0:" not in missing.stderr
    empty = env_file(tmp_path, "empty", "# nothing here\n")
    res = cli("migrate", "--mount", kv2, str(empty))
    assert res.code == 0 and f"{empty}: empty file" in res.stderr and "Vault already holds" not in res.output, res.output
    one = env_file(tmp_path, "api", "A=1\n")
    two = env_file(tmp_path, "api", "B=1\n", name=".env.local")
    clash = cli("migrate", "--mount", kv2, str(one), str(two))
    assert clash.code == 2 and "would all go to service 'api'" in clash.stderr, clash.output
    stdin = cli("migrate", "--mount", kv2, "-")
    assert stdin.code == 2 and "--service" in stdin.stderr
    no_match = cli("migrate", "--mount", kv2, str(tmp_path / "*" / "none.env"))
    assert no_match.code == 2 and "no file matches" in no_match.stderr


def test_expand_keeps_explicit_services_and_merges_on_request(tmp_path):
    a = env_file(tmp_path, "api", "A=1\n")
    b = env_file(tmp_path, "api", "B=1\n", name=".env.local")
    specs = inputs.expand([str(a), f"{b}:api-local"])
    assert [(s.file, s.service) for s in specs] == [(str(a), None), (str(b), "api-local")]
    merged = inputs.expand([str(a), str(b)], service="api")
    assert {s.service for s in merged} == {"api"}


POLICY_OK = 'path "secret/data/x" { capabilities = ["read"] }\n'
POLICY_BAD = 'path "secret/data/x" { capabilities = ["read"\n'


def test_policies_dry_run_validates_on_the_server(cli, fresh_vault, tmp_path):
    folder = tmp_path / "pol"
    folder.mkdir()
    (folder / "good.hcl").write_text(POLICY_OK)
    (folder / "bad.hcl").write_text(POLICY_BAD)
    env = fresh_vault.env(tmp_path, fresh_vault.token)
    from tests.conftest import run_cli

    res = run_cli("policies", "apply", "--dry-run", str(folder), env=env, cwd=tmp_path)
    assert res.code == 2 and "bad.hcl" in res.stderr and "rejected" in res.stderr, res.output
    (folder / "bad.hcl").unlink()
    pending = run_cli("policies", "apply", "--dry-run", "--detailed-exitcode", str(folder), env=env, cwd=tmp_path)
    assert pending.code == 2 and re.search(r"Plan: 1 to add, 0 to change, 0 to remove", pending.stdout), pending.output
    assert "good" not in fresh_vault.client(fresh_vault.token).sys.list_acl_policies()["data"]["keys"]
    assert run_cli("policies", "apply", str(folder), env=env, cwd=tmp_path).code == 0
    clean = run_cli("policies", "apply", "--dry-run", "--detailed-exitcode", "--format", "json", str(folder), env=env, cwd=tmp_path)
    assert clean.code == 0, clean.output
    doc = json.loads(clean.stdout)["plan"]
    assert doc["format_version"] == "1.0" and doc["summary"]["add"] == 0
