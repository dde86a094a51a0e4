"""Benchmark: one `vaultsync daemon` holding many services and database leases, on time.

N services, each with one KV v2 secret (five keys), L/N dynamic database secrets
(``dynamic = { db0 = "database/creds/sNNNN_0", ... }``: one Vault role per lease on the real
PostgreSQL, so that no two leases share a path and `vault agent` cannot fold them into one)
and one dotenv destination. Each role's TTL is spread evenly between ``--ttl-min`` and
``--ttl-max`` (default 1 to 10 minutes) with a max TTL of ``--max-ttl`` (default 1 h), so
renewals happen all the time. Everything runs on a fresh Vault dev server per contender with
a file audit device, as in bench/daemon.py (whose helpers this reuses).

Reported for the window from launch to ``--seconds`` later:
  start-up     seconds until every file holds all its keys (ready)
  RSS          peak and steady (mean after ready) of the process tree, MiB
  CPU          user+sys seconds; per renewal
  requests     from the audit log: all, renewals (sys/leases/renew), and requests per renewal
               after ready, KV polls left out (target 1)
  lateness     vaultsync only, from its ``vaultsync_job_lateness_seconds`` histogram (kind=lease):
               p50/p99/max as the upper bound of the bucket they fall in
  expiry       leases whose expiry passed (from ``vaultsync_lease_expiry_timestamp_seconds``,
               scraped every ``--scrape`` seconds, 15 by default as a Prometheus would): must stay 0
  log volume   bytes the contender logged
Targets (issue 16): RSS < 150 MB, p99 lateness < 1 s, no lease expiring, ready < 60 s,
1 request per renewal. They are printed next to the numbers; nothing here fails on them.

Usage: python bench/scale.py [--services 50] [--leases 500] [--seconds 120] [--only vaultsync|agent]
       [--ttl-min 60s] [--ttl-max 600s] [--max-ttl 1h] [--poll 60s] [--keep]
Needs root (PostgreSQL runs as the ``postgres`` OS user), like bench/daemon.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from dotenv import dotenv_values

_spec = importlib.util.spec_from_file_location("bench_daemon", Path(__file__).with_name("daemon.py"))
bd = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["bench_daemon"] = bd  # its dataclasses look their module up
_spec.loader.exec_module(bd)  # type: ignore[union-attr]

from vaultsync import devserver  # noqa: E402
from vaultsync.leases import parse_duration  # noqa: E402

KV_KEYS = bd.KV_KEYS


@dataclass
class Layout:
    names: list[str]
    per_service: int
    kv: dict[str, dict[str, str]] = field(default_factory=dict)

    def role(self, name: str, j: int) -> str:
        return f"{name}_{j}"

    def expected_keys(self) -> int:
        return len(KV_KEYS) + 2 * self.per_service


def setup(v: Any, pg: Any, workdir: Path, args: argparse.Namespace, lay: Layout) -> Path:
    """Policy, KV secrets, one role per lease with spread TTLs, a renewable token, the audit log."""
    v.call("PUT", "sys/policies/acl/bench", json={"policy": 'path "*" {\n  capabilities = ["create", "read", "update", '
                                                           '"delete", "list", "sudo"]\n}\n'})
    v.call("POST", "sys/mounts/database", json={"type": "database"})
    v.call("POST", "database/config/pg", json={
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg.port}/postgres?sslmode=disable",
        "username": pg.user, "password": pg.password, "allowed_roles": ["*"], "verify_connection": True,
        "max_open_connections": args.pg_connections,
    })
    lo, hi = parse_duration(args.ttl_min), parse_duration(args.ttl_max)
    total = len(lay.names) * lay.per_service
    jobs = []
    for s, name in enumerate(lay.names):
        lay.kv[name] = {k: secrets.token_urlsafe(18) for k in KV_KEYS}
        jobs.append(("POST", f"secret/data/compose/{name}", {"data": lay.kv[name]}))
        for j in range(lay.per_service):
            i = s * lay.per_service + j
            ttl = int(lo + (hi - lo) * i / max(1, total - 1))
            jobs.append(("POST", f"database/roles/{lay.role(name, j)}", {
                "db_name": "pg", "default_ttl": ttl, "max_ttl": args.max_ttl,
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
            }))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: v.call(j[0], j[1], json=j[2]), jobs))
    tok = v.call("POST", "auth/token/create", json={"policies": ["bench"], "ttl": "1h", "renewable": True})
    token_file = workdir / "token"
    token_file.write_text(tok["auth"]["client_token"] + "\n")
    os.chmod(token_file, 0o600)
    v.call("POST", "sys/audit/file", json={"type": "file", "options": {"file_path": str(v.audit_log)}})
    return token_file


def vaultsync_config(workdir: Path, v: Any, token_file: Path, args: argparse.Namespace, lay: Layout, port: int) -> Path:
    body = [
        f'[vault]\naddr = "{v.addr}"\ntoken_file = "{token_file}"\ntimeout = "30s"\n',
        '[kv]\nmount = "secret"\nprefix = "compose"\nversion = 2\n',
        '[auth]\nmethod = "token"\n',
        f'[daemon]\npoll_interval = "{args.poll}"\nmetrics_addr = "127.0.0.1:{port}"\n',
    ]
    for name in lay.names:
        dyn = ", ".join(f'db{j} = "database/creds/{lay.role(name, j)}"' for j in range(lay.per_service))
        body.append(f'[services.{name}]\ndynamic = {{ {dyn} }}\n'
                    f'[[services.{name}.destinations]]\npath = "{workdir / "out" / (name + ".env")}"\nstyle = "dotenv"\n')
    path = workdir / "vaultsync.toml"
    path.write_text("\n".join(body))
    return path


def agent_config(workdir: Path, v: Any, token_file: Path, args: argparse.Namespace, lay: Layout) -> Path:
    parts = [
        f'pid_file = "{workdir / "agent.pid"}"\n',
        f'vault {{\n  address = "{v.addr}"\n}}\n',
        f'auto_auth {{\n  method "token_file" {{\n    config = {{\n      token_file_path = "{token_file}"\n    }}\n  }}\n}}\n',
        f'template_config {{\n  static_secret_render_interval = "{args.poll}"\n  exit_on_retry_failure = true\n}}\n',
    ]
    for name in lay.names:
        text = [f'{{{{ with secret "secret/data/compose/{name}" }}}}{{{{ range $k, $v := .Data.data }}}}'
                f"{{{{ $k }}}}='{{{{ $v }}}}'\n{{{{ end }}}}{{{{ end }}}}"]
        for j in range(lay.per_service):
            text.append(f'{{{{ with secret "database/creds/{lay.role(name, j)}" }}}}DB{j}_PASSWORD=\'{{{{ .Data.password }}}}\'\n'
                        f"DB{j}_USERNAME='{{{{ .Data.username }}}}'\n{{{{ end }}}}")
        tmpl = workdir / "templates" / f"{name}.ctmpl"
        tmpl.write_text("".join(text))
        parts.append(f'template {{\n  source = "{tmpl}"\n  destination = "{workdir / "out" / (name + ".env")}"\n'
                     f'  perms = "0600"\n  error_on_missing_key = true\n}}\n')
    path = workdir / "agent.hcl"
    path.write_text("\n".join(parts))
    return path


def ready(out: Path, lay: Layout, done: set[str]) -> bool:
    """Every file holds its KV values and all its credentials (files found complete are not read again)."""
    for name in lay.names:
        if name in done:
            continue
        try:
            values = dotenv_values(out / f"{name}.env", interpolate=False)
        except OSError:
            return False
        if len(values) != lay.expected_keys() or any(values.get(k) != val for k, val in lay.kv[name].items()):
            return False
        done.add(name)
    return True


# --- vaultsync's own metrics ---------------------------------------------------------------------


def scrape(port: int) -> str:
    try:
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except requests.RequestException:
        return ""


def expired_leases(text: str, now: float) -> tuple[int, int]:
    """(leases whose expiry has passed, leases seen)."""
    expired = seen = 0
    for line in text.splitlines():
        if line.startswith("vaultsync_lease_expiry_timestamp_seconds{"):
            seen += 1
            value = float(line.rsplit(" ", 1)[1])
            expired += 0 < value < now
    return expired, seen


def lateness(text: str, kind: str) -> dict[str, Any]:
    """p50/p99/max of a job kind's lateness as bucket upper bounds, and the count."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("vaultsync_job_lateness_seconds_bucket{") and f'kind="{kind}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out: dict[str, Any] = {"count": int(total)}
    if not total:
        return out
    for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        out[label] = next(le for le, n in buckets if n >= q * total)
    return out


def counter(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


# --- one contender ----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ready_after: float | None = None
    rss_peak: float = 0.0
    rss_steady: float = 0.0
    cpu: float = 0.0
    cpu_steady: float = 0.0
    requests: int = 0
    renewals: int = 0
    steady_requests: int = 0
    steady_renewals: int = 0
    steady_kv: int = 0
    issued: int = 0
    breakdown: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    late: dict[str, dict[str, Any]] = field(default_factory=dict)
    expired_max: int = 0
    leases_seen: int = 0
    log_bytes: int = 0
    server_cpu: tuple[float, float] = (0.0, 0.0)  # Vault and PostgreSQL process trees: until ready, after
    files_ok: int = 0
    logins: tuple[int, int] = (0, 0)
    problems: list[str] = field(default_factory=list)


def audit_split(log: Path, start: int, end: int, after: float | None) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """(by endpoint over the window, by endpoint after ``after`` (unix time), errors)."""
    from datetime import datetime

    whole: Counter[str] = Counter()
    steady: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for entry in bd.audit_response_entries(log, start, end):
        path = entry["request"]["path"]
        ep = ("database/creds/* (issue)" if path.startswith("database/creds/") else
              "sys/leases/renew" if path.startswith("sys/leases/renew") else bd.endpoint(path))
        whole[ep] += 1
        if after is not None and datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp() >= after:
            steady[ep] += 1
        if entry.get("error"):
            errors[f"{ep}: {entry['error'][:80]}"] += 1
    return whole, steady, errors


def run_contender(which: str, procs: Any, base: Path, pg: Any, binary: str, args: argparse.Namespace, lay: Layout) -> Result:
    workdir = base / which
    for d in (workdir, workdir / "out", workdir / "templates", workdir / "home"):
        d.mkdir(mode=0o700)
    print(f"[{which}] fresh Vault dev server; {len(lay.names)} services x {lay.per_service} leases ...", flush=True)
    v = bd.start_vault(procs, workdir, binary)
    res = Result(which)
    try:
        t = time.monotonic()
        token_file = setup(v, pg, workdir, args, lay)
        print(f"[{which}] set up in {time.monotonic() - t:.1f} s", flush=True)
        env = bd.clean_env(workdir / "home")
        port = bd.free_port()
        if which == "vaultsync":
            argv = [sys.executable, "-m", "vaultsync", "--config",
                    str(vaultsync_config(workdir, v, token_file, args, lay, port)), "daemon"]
        else:
            argv = [binary, "agent", f"-config={agent_config(workdir, v, token_file, args, lay)}"]
        time.sleep(0.5)
        audit0 = bd.audit_size(v.audit_log)
        log = workdir / f"{which}.log"
        def servers_cpu() -> float:
            return sum(bd.cpu_seconds(bd.tree(v.proc.pid))) + sum(bd.cpu_seconds(bd.tree(pg.proc.pid)))

        server0 = servers_cpu()
        t0 = time.monotonic()
        proc = procs.spawn(which, argv, log=log, env=env, cwd=workdir)
        sampler = bd.Sampler(proc.pid)
        sampler.start()
        spy = None
        if args.profile and which == "vaultsync":  # py-spy (pip install py-spy) samples the daemon from outside
            spy = procs.spawn("py-spy", [args.py_spy, "record", "-r", "50", "-f", "raw", "-o", args.profile,
                                         "-d", str(int(args.seconds) - 2), "--pid", str(proc.pid)],
                              log=workdir / "py-spy.log", env=env, cwd=workdir, stop_signal=signal.SIGINT)
        done: set[str] = set()
        deadline, next_scrape, ready_wall, cpu_at_ready, rss_at = t0 + args.seconds, 0.0, None, 0.0, 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sampler.finish()
                raise bd.BenchError(f"{which} exited with {proc.returncode}:\n{bd.tail(log)}")
            if res.ready_after is None and ready(workdir / "out", lay, done):
                res.ready_after, ready_wall = time.monotonic() - t0, time.time()
                cpu_at_ready, rss_at = sum(sampler.cpu), len(sampler.rss)
                server_at_ready = servers_cpu()
                print(f"[{which}] ready after {res.ready_after:.1f} s", flush=True)
            if which == "vaultsync" and time.monotonic() >= next_scrape:
                expired, seen = expired_leases(scrape(port), time.time())
                res.expired_max, res.leases_seen = max(res.expired_max, expired), max(res.leases_seen, seen)
                next_scrape = time.monotonic() + args.scrape
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        sampler.finish()
        if ready_wall:
            res.server_cpu = (server_at_ready - server0, servers_cpu() - server_at_ready)
        if spy is not None:  # it lags under load; SIGINT makes it write what it has
            try:
                spy.wait(30)
            except bd.subprocess.TimeoutExpired:
                procs.stop(spy, timeout=120)
        if which == "vaultsync":
            text = scrape(port)
            res.late = {k: lateness(text, k) for k in ("lease", "token", "kv", "render")}
        audit1 = bd.audit_size(v.audit_log)
        res.cpu = sum(sampler.cpu)
        res.cpu_steady = res.cpu - cpu_at_ready if ready_wall else 0.0
        res.rss_peak = max(sampler.rss) / 1024 if sampler.rss else 0.0
        steady_rss = sampler.rss[rss_at:] if ready_wall else []
        res.rss_steady = statistics.fmean(steady_rss) / 1024 if steady_rss else 0.0
        res.breakdown, steady, res.errors = audit_split(v.audit_log, audit0, audit1, ready_wall)
        res.requests = sum(res.breakdown.values())
        res.renewals = res.breakdown["sys/leases/renew"]
        res.issued = res.breakdown["database/creds/* (issue)"]
        res.steady_requests, res.steady_renewals = sum(steady.values()), steady["sys/leases/renew"]
        res.steady_kv = steady[f"{bd.KV_MOUNT}/data/* (KV read)"]
        res.log_bytes = log.stat().st_size if log.exists() else 0
        res.files_ok = sum(ready(workdir / "out", Layout([n], lay.per_service, lay.kv), set()) for n in lay.names)
        sample = lay.names[:: max(1, len(lay.names) // 20)]
        good = 0
        for name in sample:
            values = dotenv_values(workdir / "out" / f"{name}.env", interpolate=False)
            good += all(bd.can_login(pg, values.get(f"DB{j}_USERNAME") or "", values.get(f"DB{j}_PASSWORD") or "")
                        for j in range(0, lay.per_service, max(1, lay.per_service // 3)))
        res.logins = (good, len(sample))
        rc = procs.stop(proc, timeout=60)
        if rc not in (0, -signal.SIGTERM):
            res.problems.append(f"{which} exited with {rc} on SIGTERM")
        return res
    finally:
        procs.stop(v.proc)


def report(results: dict[str, Result], args: argparse.Namespace, lay: Layout) -> None:
    a, b = results.get("vaultsync"), results.get("agent")
    cols = [r for r in (a, b) if r]
    print()
    print(f"{len(lay.names)} services x {lay.per_service} leases = {len(lay.names) * lay.per_service} leases, "
          f"{len(lay.names)} KV secrets, {len(lay.names)} destinations; {args.seconds:.0f} s; lease TTL "
          f"{args.ttl_min}..{args.ttl_max} (max {args.max_ttl}); poll {args.poll}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")

    def per(x: float, n: int) -> str:
        return f"{x / n:.4f}" if n else "-"

    def ratio(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}" if x is not None and y else "-"

    rows = [
        ("ready after (s)  [target < 60]", [("never" if r.ready_after is None else f"{r.ready_after:.1f}") for r in cols],
         ratio(a and a.ready_after, b and b.ready_after)),
        ("peak RSS MiB  [target < 150 MB]", [f"{r.rss_peak:.1f}" for r in cols], ratio(a and a.rss_peak, b and b.rss_peak)),
        ("steady RSS MiB (after ready)", [f"{r.rss_steady:.1f}" for r in cols], ratio(a and a.rss_steady, b and b.rss_steady)),
        ("CPU s (whole window)", [f"{r.cpu:.1f}" for r in cols], ratio(a and a.cpu, b and b.cpu)),
        ("CPU s after ready", [f"{r.cpu_steady:.1f}" for r in cols], ratio(a and a.cpu_steady, b and b.cpu_steady)),
        ("Vault+PostgreSQL CPU s to ready", [f"{r.server_cpu[0]:.1f}" for r in cols], ""),
        ("Vault+PostgreSQL CPU s after", [f"{r.server_cpu[1]:.1f}" for r in cols], ""),
        ("renewals after ready", [str(r.steady_renewals) for r in cols], ""),
        ("CPU s per renewal (after ready)", [per(r.cpu_steady, r.steady_renewals) for r in cols], ""),
        ("requests (audit log, window)", [str(r.requests) for r in cols], ratio(a and a.requests, b and b.requests)),
        ("credentials issued", [str(r.issued) for r in cols], ""),
        ("requests/renewal after ready, no KV  [1]",
         [per(r.steady_requests - r.steady_kv, r.steady_renewals) for r in cols], ""),
        ("log bytes", [str(r.log_bytes) for r in cols], ""),
        ("files complete", [f"{r.files_ok}/{len(lay.names)}" for r in cols], ""),
        ("sampled credentials log in", [f"{r.logins[0]}/{r.logins[1]}" for r in cols], ""),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    print(f"{'':<{w0}}" + "".join(f"{r.name:>14}" for r in cols) + (f"{'vs/agent':>10}" if a and b else ""))
    for label, values, rt in rows:
        print(f"{label:<{w0}}" + "".join(f"{x:>14}" for x in values) + (f"{rt:>10}" if a and b else ""))
    if a:
        print("vaultsync lateness (s, bucket upper bounds) [target p99 < 1]: "
              + "; ".join(f"{k}: n={v['count']} p50<={v.get('p50', '-')} p99<={v.get('p99', '-')} max<={v.get('max', '-')}"
                          for k, v in a.late.items() if v.get("count")))
        print(f"vaultsync leases past their expiry at any scrape (every {args.scrape:.0f} s): {a.expired_max} "
              f"of {a.leases_seen} [target 0]")
    for r in cols:
        print(f"requests by endpoint ({r.name}): " + ", ".join(f"{ep} {n}" for ep, n in r.breakdown.most_common()))
        if r.errors:
            print(f"error responses ({r.name}): " + "; ".join(f"{n}x {e}" for e, n in r.errors.most_common(5)))
        for p in r.problems:
            print(f"problem ({r.name}): {p}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=50)
    ap.add_argument("--leases", type=int, default=500, help="in all; spread evenly over the services")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--ttl-min", default="60s")
    ap.add_argument("--ttl-max", default="600s")
    ap.add_argument("--max-ttl", default="1h")
    ap.add_argument("--poll", default="60s", help="vaultsync poll_interval = agent static_secret_render_interval")
    ap.add_argument("--scrape", type=float, default=15.0,
                    help="seconds between scrapes of vaultsync's metrics (each costs it ~50 ms CPU per 1,000 leases)")
    ap.add_argument("--pg-connections", type=int, default=8, help="the database plugin's max_open_connections")
    ap.add_argument("--only", choices=["vaultsync", "agent"])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--profile", help="write a py-spy raw profile of the daemon to this file")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")))
    args = ap.parse_args()
    for opt in ("ttl_min", "ttl_max", "max_ttl", "poll"):
        parse_duration(getattr(args, opt))
    width = 4 if args.services > 100 else 2
    lay = Layout([f"s{i:0{width}d}" for i in range(args.services)], max(1, args.leases // args.services))
    binary = devserver.find_server_binary()

    def bench(procs: bd.Processes, base: Path) -> int:
        results: dict[str, Result] = {}
        pg = bd.start_postgres(procs, base)
        for which in ("vaultsync", "agent"):
            if args.only in (None, which):
                try:
                    results[which] = run_contender(which, procs, base, pg, binary, args, lay)
                except bd.BenchError as exc:
                    print(f"[{which}] failed: {exc}", flush=True)
        report(results, args, lay)
        return 0

    return bd.run_bench("vaultsync-bench-scale-", bench, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
