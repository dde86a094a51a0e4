"""Benchmark: `vaultsync migrate` against a plain keep-alive loop and one `kv put` per secret.

Generates 10,000 keys across 200 services, starts a fresh dev server (or uses
VAULT_ADDR/VAULT_TOKEN when both are set), and prints keys/s for:
  vaultsync  plan (one read per secret) + apply (one check-and-set write per secret)
  (a) loop   reads the same files with python-dotenv's dotenv_values and writes the same
             secrets over one keep-alive requests.Session, same concurrency, no plan, no CAS
  (a0)       the same loop given pre-parsed payloads (writes only), for transparency
  (b) kv put one `vault kv put` process per secret (data on stdin, never in argv)
and then the time of a second, unchanged vaultsync run and its write count.
Each contender writes to its own fresh KV v2 mount. Ratios are against (a),
measured in this same run. Target (issue 16): vaultsync >= 0.9 x (a0).

Usage: python bench/migrate.py [--services 200] [--keys 10000] [--concurrency 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hvac
import requests
from dotenv import dotenv_values

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vaultsync import devserver  # noqa: E402
from vaultsync import migrate as m  # noqa: E402
from vaultsync.config import SourceSpec, VaultSettings  # noqa: E402
from vaultsync.vault import KV, make_client  # noqa: E402


def generate(root: Path, services: int, keys: int) -> list[Path]:
    per = keys // services
    files = []
    for s in range(services):
        path = root / f"svc{s:03d}" / ".env"
        path.parent.mkdir(parents=True)
        lines = [f"KEY_{k:03d}={secrets.token_urlsafe(24)}" for k in range(per)]
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return files


def fresh_mount(root: hvac.Client) -> str:
    mount = "b" + uuid.uuid4().hex[:8]
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    return mount


def run_vaultsync(addr: str, token: str, mount: str, files: list[Path], concurrency: int) -> tuple[float, int]:
    client = make_client(VaultSettings(addr=addr), pool_size=concurrency, token=token)
    kv = KV(client, mount, 2)
    start = time.perf_counter()
    targets = m.build_targets([SourceSpec(str(f)) for f in files], prefix="compose")
    plan = m.plan(kv, targets, concurrency=concurrency)
    outcome = m.apply(kv, plan, concurrency=concurrency)
    elapsed = time.perf_counter() - start
    assert not outcome.failed and not outcome.conflicts, outcome
    return elapsed, len(outcome.written)


def run_plain_loop(addr: str, token: str, mount: str, payloads: dict[str, dict] | list[Path], concurrency: int) -> float:
    """Writes ``payloads``; given files instead, parses them with dotenv_values first (timed)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    headers = {"X-Vault-Token": token}

    def put(item: tuple[str, dict]) -> None:
        r = session.post(f"{addr}/v1/{mount}/data/{item[0]}", json={"data": item[1]}, headers=headers, timeout=30)
        r.raise_for_status()

    start = time.perf_counter()
    if isinstance(payloads, list):
        payloads = {f"compose/{f.parent.name}": dotenv_values(f, interpolate=False) for f in payloads}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(put, payloads.items()))
    return time.perf_counter() - start


def run_kv_put(binary: str, addr: str, token: str, mount: str, payloads: dict[str, dict]) -> float:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "VAULT_ADDR": addr, "VAULT_TOKEN": token, "HOME": tempfile.gettempdir()}
    start = time.perf_counter()
    for path, data in payloads.items():
        subprocess.run([binary, "kv", "put", f"-mount={mount}", path, "-"], input=json.dumps(data), env=env,
                       check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=200)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each fast contender; the median is reported")
    ap.add_argument("--no-kv-put", action="store_true", help="skip (b), one process per secret (minutes at 2,000 secrets)")
    args = ap.parse_args()

    server = None
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not (addr and token):
        server = devserver.start(state_dir=Path(tempfile.mkdtemp(prefix="vaultsync-bench-")))
        addr, token = server.addr, server.token
    try:
        root = hvac.Client(url=addr, token=token)
        with tempfile.TemporaryDirectory() as tmp:
            files = generate(Path(tmp), args.services, args.keys)
            targets = m.build_targets([SourceSpec(str(f)) for f in files], prefix="compose")
            payloads = {t.path: dict(t.data) for t in targets}
            nkeys = sum(len(d) for d in payloads.values())
            print(f"{nkeys} keys in {len(payloads)} secrets, concurrency {args.concurrency}, server {addr}")

            vs_times, loop_times, writes_only = [], [], []
            for _ in range(args.repeat):  # interleave so drift hits all alike
                loop_times.append(run_plain_loop(addr, token, fresh_mount(root), files, args.concurrency))
                writes_only.append(run_plain_loop(addr, token, fresh_mount(root), payloads, args.concurrency))
                mount = fresh_mount(root)
                elapsed, written = run_vaultsync(addr, token, mount, files, args.concurrency)
                assert written == len(payloads)
                vs_times.append(elapsed)
            vs, loop, loop0 = statistics.median(vs_times), statistics.median(loop_times), statistics.median(writes_only)
            again, rewritten = run_vaultsync(addr, token, mount, files, args.concurrency)
            kvput = None if args.no_kv_put else run_kv_put(devserver.find_server_binary(), addr, token, fresh_mount(root), payloads)

        rate = lambda t: nkeys / t  # noqa: E731
        print(f"{'contender':<38}{'seconds':>9}{'keys/s':>10}{'vs (a)':>8}")
        rows = (("vaultsync migrate (parse+plan+apply)", vs), ("(a) dotenv_values + plain loop", loop),
                ("(a0) plain loop, pre-parsed", loop0), ("(b) one kv put per secret", kvput))
        for name, t in rows:
            if t is not None:
                print(f"{name:<38}{t:>9.3f}{rate(t):>10.0f}{loop / t:>8.2f}")
        print(f"ratio vaultsync/(a) = {loop / vs:.2f}; vaultsync/(a0) = {loop0 / vs:.2f} (target >= 0.90)"
              + (f"; vaultsync is {kvput / vs:.1f}x faster than (b)" if kvput else ""))
        print(f"runs: vaultsync {' '.join(f'{t:.3f}' for t in vs_times)}; (a) {' '.join(f'{t:.3f}' for t in loop_times)}; "
              f"(a0) {' '.join(f'{t:.3f}' for t in writes_only)}")
        print(f"second unchanged run: {again:.3f} s, {rewritten} writes")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
