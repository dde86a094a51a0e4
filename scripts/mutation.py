"""`make mutation`: mutmut over the modules that hold vaultsync's guarantees, one module at a time.

Each module is mutated in a scratch copy of the working tree (so `mutants/` never lands in the
repository) and every mutant runs only against the tests that cover it (mutmut records which
tests call which function). Prints the score per module and writes a report with every survivor's
diff to ~/.cache/vaultsync/mutation/<module>.txt.

    python scripts/mutation.py [MODULE ...]      # default: every module in MODULES

Tests that reach a module only through a subprocess (the CLI, the daemon) are invisible to
mutmut's test mapping: a module is listed with the in-process tests that exercise it.
Not part of CI: a module takes minutes to an hour on two cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vaultsync" / "mutation"

# module -> the test files that exercise it in-process (in the order of priority of issue 17)
MODULES: dict[str, list[str]] = {
    "leases": ["tests/test_leases.py"],
    "migrate": ["tests/test_migrate_unit.py"],
    "envfile": ["tests/test_envfile.py", "tests/test_migrate_unit.py"],
    "rotation": ["tests/test_rotation.py"],
    "logging": ["tests/test_logging.py", "tests/test_redaction_unit.py"],
    "formats": ["tests/test_formats.py", "tests/test_formats_unit.py", "tests/test_templates.py"],
    "safefs": ["tests/test_safefs_unit.py"],
    "auth": ["tests/test_auth.py", "tests/test_policies.py"],
    "policies": ["tests/test_policy_generation.py"],
    "policy_gen": ["tests/test_policy_generation.py"],
    "render": ["tests/test_render.py"],
}
CHILDREN = os.environ.get("MUTATION_JOBS", "2")  # the CI/dev machine has two shared cores


def scratch_copy(module: str) -> Path:
    """The working tree's files (tracked and untracked, not ignored) in a fresh folder."""
    dest = CACHE / f"tree-{module}"
    shutil.rmtree(dest, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def configure(tree: Path, module: str) -> None:
    """Point mutmut at one module and its tests (a [tool.mutmut] table in the copy's pyproject)."""
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    assert "[tool.mutmut]" not in text, "pyproject.toml already has a [tool.mutmut] table"
    tests = ", ".join(f'"{t}"' for t in MODULES[module])
    # mutmut runs the tests inside mutants/: give them the policies, rules, tools ... they read.
    extra = ", ".join(f'"{p.name}"' for p in sorted(tree.iterdir()) if p.name not in ("vaultsync", "mutants", "tests"))
    pyproject.write_text(text + (
        "\n[tool.mutmut]\n"
        'source_paths = ["vaultsync"]\n'
        f"also_copy = [{extra}]\n"
        f'only_mutate = ["vaultsync/{module}.py"]\n'
        f"pytest_add_cli_args_test_selection = [{tests}]\n"
        # No pytest-timeout inside mutmut's workers: mutmut times each mutant itself.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:timeout", "-q"]\n'
    ))
    tomllib.loads(pyproject.read_text())  # fail here, not inside mutmut, on a broken table


def run(module: str) -> tuple[int, int, dict[str, list[str]]]:
    tree = scratch_copy(module)
    configure(tree, module)
    mutmut = [sys.executable, "-m", "mutmut"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # mutmut runs several pytest sessions at once: a fixed --basetemp would be cleared under the others' feet.
    env["PYTEST_ADDOPTS"] = re.sub(r"--basetemp[= ]\S+", "", env.get("PYTEST_ADDOPTS", "")).strip()
    subprocess.run([*mutmut, "run", "--max-children", CHILDREN], cwd=tree, env=env, check=False)
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=tree, env=env, capture_output=True, text=True).stdout
    by_status: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            by_status.setdefault(m.group(2).strip(), []).append(m.group(1))
    killed = len(by_status.get("killed", []))
    total = sum(len(v) for v in by_status.values())
    report = [f"mutation report for vaultsync/{module}.py: {killed}/{total} killed", ""]
    for status, names in sorted(by_status.items()):
        report.append(f"{status}: {len(names)}")
    for status, names in sorted(by_status.items()):
        if status in ("killed", "not checked"):  # "not checked": the run stopped (a failing clean test run)
            continue
        for name in names:
            diff = subprocess.run([*mutmut, "show", name], cwd=tree, env=env, capture_output=True, text=True).stdout
            report += ["", f"--- {status}: {name}", diff.rstrip()]
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{module}.txt").write_text("\n".join(report) + "\n")
    return killed, total, by_status


def main(argv: list[str]) -> int:
    modules = argv or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choose from {list(MODULES)}", file=sys.stderr)
        return 2
    lines = []
    for module in modules:
        killed, total, by_status = run(module)
        score = 100.0 * killed / total if total else 0.0
        others = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_status.items()) if k != "killed")
        lines.append(f"vaultsync/{module}.py: {killed}/{total} mutants killed ({score:.1f} %){'; ' + others if others else ''}"
                     f"  -> {CACHE / (module + '.txt')}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
