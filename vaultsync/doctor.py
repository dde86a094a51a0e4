"""``vaultsync doctor``: walk the setup the way a failing command would, and print a checklist.

Each check says ok, warn or fail, and a failing one names the next step. Checks stop early only
where nothing later can work (no address, no server, no token); everything else is independent,
so one run shows every problem. Read-only: the server is only asked, never changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hvac

from vaultsync import connection, guidance
from vaultsync import policies as pol
from vaultsync.config import Settings, token_with_source
from vaultsync.errors import VaultsyncError
from vaultsync.logging import scrub

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    next_step: str = ""


class Doctor:
    def __init__(self, settings: Settings, make_client: Callable[..., hvac.Client]) -> None:
        self.s, self._make_client = settings, make_client
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, next_step: str = "") -> bool:
        self.checks.append(Check(name, status, scrub(detail), next_step))
        return status != FAIL

    def run(self) -> list[Check]:
        client = self._address_and_tls()
        if client is not None and self._server(client) and self._token(client):
            self._kv(client)
            self._policies_and_roles(client)
        self._credential_files()
        self._destinations()
        return self.checks

    # -- connection -------------------------------------------------------------------

    def _address_and_tls(self) -> hvac.Client | None:
        v = self.s.vault
        try:
            addr = connection.check_addr(v.addr)
            client = self._make_client(v)
        except VaultsyncError as exc:
            self.add("address", FAIL, str(exc), "set VAULT_ADDR (or --address / vault.addr)")
            return None
        self.add("address", OK, addr)
        if addr.startswith("http://"):
            loopback = any(h in addr for h in ("://127.", "://localhost", "://[::1]"))
            self.add("tls", OK if loopback else WARN, "plain http" + (" on loopback" if loopback else " over the network"),
                     "" if loopback else "use https:// with vault.cacert (tokens and secrets travel in clear)")
        elif not v.tls_verify:
            self.add("tls", WARN, "https, but certificate verification is off", "drop --tls-skip-verify / VAULT_SKIP_VERIFY")
        else:
            self.add("tls", OK, f"https, verified with {v.cacert or v.capath or 'the system CAs'}")
        return client

    def _server(self, client: hvac.Client) -> bool:
        try:
            # Every state answers 200 with these codes, so the body says sealed/standby itself.
            data = client.adapter.get("/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200&perfstandbyok=true")
        except Exception as exc:  # noqa: BLE001 - reported as a check, never raised
            reason = connection.explain_transport(exc) or f"{type(exc).__name__}: {exc}"
            return self.add("server", FAIL, reason, "start the server, or fix VAULT_ADDR / the CA settings")
        if not isinstance(data, dict):
            return self.add("server", FAIL, "no Vault API answers at this address", "check the path in VAULT_ADDR")
        if data.get("sealed"):
            return self.add("server", FAIL, f"version {data.get('version')}, sealed", "unseal it (vault operator unseal)")
        return self.add("server", OK, f"version {data.get('version')}, unsealed")

    def _token(self, client: hvac.Client) -> bool:
        try:
            _token, source = token_with_source(self.s.vault)
        except VaultsyncError as exc:
            return self.add("token", FAIL, str(exc), "fix the token file, or set VAULT_TOKEN")
        if not client.token:
            return self.add("token", FAIL, "no token", "set VAULT_TOKEN, --token-file FILE, vault.token_file, or `vault login`")
        try:
            info = connection.preflight(client)
        except VaultsyncError as exc:
            return self.add("token", FAIL, str(exc), "log in again (`vault login`) or set a valid VAULT_TOKEN")
        ttl = info.get("ttl")
        left = "never expires" if not ttl else f"{ttl}s left"
        policies = ", ".join(info.get("policies") or ()) or "unknown (may not look itself up)"
        return self.add("token", OK, f"from {source}; {left}; policies: {policies}")

    def _kv(self, client: hvac.Client) -> None:
        from vaultsync.vault import detect_kv_version

        mount = self.s.kv.mount
        try:
            found = detect_kv_version(client, mount)
        except VaultsyncError as exc:
            self.add("kv mount", FAIL, str(exc), f"enable it: vault secrets enable -path={mount} kv-v2")
            return
        wanted = self.s.kv.version
        if wanted and wanted != found:
            self.add("kv mount", FAIL, f"{mount}/ is KV v{found}, the config says kv.version = {wanted}",
                     f"set kv.version = {found}")
            return
        self.add("kv mount", OK, f"{mount}/ is KV v{found}")

    # -- what the config needs on the server ---------------------------------------------------

    def _policies_and_roles(self, client: hvac.Client) -> None:
        needed: dict[str, str] = {}
        for svc in self.s.services.values():
            for name in pol.service_policies(svc):
                needed.setdefault(name, f"service {svc.name}")
        if self.s.services or (self.s.auth.method == "approle" and self.s.auth.role_name):
            needed[pol.DAEMON_POLICY] = "the daemon"
        if not needed:
            self.add("policies", OK, "the config declares no services: nothing needed")
            return
        try:
            existing = set(client.sys.list_acl_policies()["data"]["keys"])
        except Exception:  # noqa: BLE001
            self.add("policies", WARN, "this token may not list policies", "run doctor with an admin token to check them")
            return
        missing = sorted(n for n in needed if n not in existing)
        self.add("policies", FAIL if missing else OK,
                 f"missing: {', '.join(missing)}" if missing else f"{len(needed)} present",
                 "vaultsync policies apply" if missing else "")
        roles = list(self.s.services)
        if self.s.auth.method == "approle" and self.s.auth.role_name:
            roles.append(self.s.auth.role_name)
        mount = self.s.auth.mount.strip("/")
        absent = [r for r in roles if not _role_exists(client, mount, r)]
        self.add("approles", FAIL if absent else OK,
                 f"missing on auth/{mount}: {', '.join(absent)}" if absent else f"{len(roles)} on auth/{mount}",
                 "vaultsync policies apply" if absent else "")

    def _credential_files(self) -> None:
        a = self.s.auth
        if a.method != "approle":
            if self.s.services:
                self.add("daemon login", WARN, "the daemon would log in with a token (auth.method = token)",
                         "for a long-running daemon, add to the config:\n" + guidance.auth_table())
            return
        for what, path in (("role_id_file", a.role_id_file), ("secret_id_file", a.secret_id_file)):
            if not path:
                self.add(f"auth.{what}", FAIL, "not set", f"set auth.{what}")
            elif not os.path.isfile(path):
                self.add(f"auth.{what}", FAIL, f"{path}: no such file",
                         f"vaultsync approle credentials {a.role_name} --out {Path(path).parent}")
            elif not os.access(path, os.R_OK):
                self.add(f"auth.{what}", FAIL, f"{path}: not readable by this user", "run as the daemon's user")
            else:
                self.add(f"auth.{what}", OK, path)

    def _destinations(self) -> None:
        for svc in self.s.services.values():
            for dest in svc.destinations:
                folder = Path(dest.path).parent
                name = f"destination {dest.path}"
                if not folder.is_dir():
                    self.add(name, FAIL, f"folder {folder} does not exist", f"mkdir -p {folder}")
                elif not os.access(folder, os.W_OK | os.X_OK):
                    self.add(name, FAIL, f"folder {folder} is not writable by this user", "run as the daemon's user")
                else:
                    self.add(name, OK, f"writable ({svc.name}, style {dest.style})")


def _role_exists(client: hvac.Client, mount: str, role: str) -> bool:
    try:
        client.adapter.get(f"/v1/auth/{mount}/role/{role}/role-id")
        return True
    except Exception:  # noqa: BLE001 - not found or not allowed: either way the role cannot be used as is
        return False


def as_text(checks: list[Check]) -> str:
    mark = {OK: "[ok]  ", WARN: "[warn]", FAIL: "[FAIL]"}
    lines = []
    for c in checks:
        lines.append(f"{mark[c.status]} {c.name}: {c.detail}")
        if c.next_step:
            lines.extend(f"         {line}" if i else f"         -> {line}" for i, line in enumerate(c.next_step.splitlines()))
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{len(checks)} checks: {failed} failed, {warned} warnings.")
    return "\n".join(lines)


def as_dict(checks: list[Check]) -> dict[str, Any]:
    return {"format_version": "1.0", "ok": not any(c.status == FAIL for c in checks), "checks": [asdict(c) for c in checks]}
