"""After `coverage combine`: the per-module report, and a failure with a clear message when the line
coverage of vaultsync/ (every process the tests started) drops below its floor.

    python scripts/coverage_check.py [--report FILE]

The floors are in pyproject.toml: [tool.vaultsync.coverage] lines_fail_under (lines only, what the
issue measures) and coverage's own [tool.coverage.report] fail_under (lines and branches together).
tests/COVERAGE.md says why each line that no test reaches is left so. --report also writes the report
with the missing lines to FILE (CI keeps it as an artefact).
"""

from __future__ import annotations

import argparse
import io
import sys
import tomllib
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent


def line_totals(cov: coverage.Coverage) -> tuple[dict[str, tuple[int, int]], int, int]:
    """{module file: (statements, missed)} and the totals, lines only."""
    per_file: dict[str, tuple[int, int]] = {}
    data = cov.get_data()
    for filename in sorted(data.measured_files()):
        rel = Path(filename).resolve().relative_to(ROOT) if Path(filename).resolve().is_relative_to(ROOT) else None
        if rel is None or rel.parts[0] != "vaultsync":
            continue
        _, statements, _, missing, _ = cov.analysis2(filename)
        per_file[str(rel)] = (len(statements), len(missing))
    return per_file, sum(s for s, _ in per_file.values()), sum(m for _, m in per_file.values())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", help="also write the report with the missing lines to this file")
    args = parser.parse_args(argv)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = float(config["tool"]["vaultsync"]["coverage"]["lines_fail_under"])
    both_floor = float(config["tool"]["coverage"]["report"].get("fail_under", 0))

    cov = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    cov.load()
    out = io.StringIO()
    try:
        both = cov.report(file=out, show_missing=True)
    except coverage.exceptions.NoDataError:
        print("coverage: no data (did the test run start at all?)", file=sys.stderr)
        return 2
    report = out.getvalue()
    per_file, statements, missed = line_totals(cov)
    lines = 100.0 * (statements - missed) / statements if statements else 0.0
    summary = (f"vaultsync/ line coverage across all processes: {lines:.1f} % ({statements - missed} of {statements} lines; "
               f"floor {floor:g} %); lines and branches: {both:.1f} % (floor {both_floor:g} %)")
    print(report + summary)
    if args.report:
        Path(args.report).write_text(report + summary + "\n")
    failures = []
    if lines < floor:
        failures.append(f"line coverage of vaultsync/ fell to {lines:.1f} %, below the floor of {floor:g} %")
    if both < both_floor:
        failures.append(f"line and branch coverage fell to {both:.1f} %, below the floor of {both_floor:g} %")
    if failures:
        print("\nCOVERAGE DROPPED: " + "; ".join(failures) + ".\n"
              "The 'Missing' column above lists the lines no test reached. Test them, or (if no test can reach\n"
              "them) list them with the reason in tests/COVERAGE.md. Lower the floor in pyproject.toml only\n"
              "when code is removed on purpose.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
