"""Production-like servers for the tests: the pinned binary in server mode, not ``-dev``.

Each node has integrated (raft) storage in its own folder, a TLS listener whose certificate is
signed by a CA made for the test session (never a committed key), and a file audit device.
Nodes are initialised with one unseal key (1 of 1 shares) and unsealed through the API.

Helpers for fault tests (issue 8 and "the daemon survives faults"):

* :meth:`Node.seal` / :meth:`Node.unseal` - seal with the root token, unseal with the key;
* :meth:`Node.stop` (SIGTERM, state kept), :meth:`Node.kill` (SIGKILL, state kept),
  :meth:`Node.pause` / :meth:`Node.resume` (SIGSTOP / SIGCONT), :meth:`Node.restart`
  (start again on the same ports and storage, then unseal);
* :func:`start_single` for one node, :func:`start_cluster` for an N-node raft cluster on
  loopback sharing one CA; :meth:`Cluster.leader` finds the active node.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vaultsync.devserver import free_port

#: Names the servers' certificates carry (besides 127.0.0.1): tests use the second one
#: with VAULT_TLS_SERVER_NAME.
SERVER_NAMES = ("localhost", "vault.test")


# --- certificates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFiles:
    cert: str
    key: str


@dataclass(frozen=True)
class CA:
    """A private CA in ``folder``: ``ca.pem`` is what clients trust."""

    folder: Path
    cert_file: str
    _cert: Any = field(repr=False)
    _key: Any = field(repr=False)

    def issue(self, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), client: bool = False) -> CertFiles:
        """A leaf certificate and key (PEM files, 0600 key) signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        return CertFiles(str(cert_file), str(key_file))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_ca(folder: Path, name: str | None = None) -> CA:
    """A new self-signed CA (EC P-256, valid two days) written to ``folder/ca.pem``."""
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"vaultsync-test-ca-{uuid.uuid4().hex[:8]}"
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = folder / "ca.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(folder, str(cert_file), cert, key)


# --- one server-mode node --------------------------------------------------------------------------


class NodeError(AssertionError):
    """A node did not reach the state a test waited for."""


@dataclass
class Keys:
    """What ``operator init`` returned: one unseal key and the root token."""

    unseal_key: str = field(default="", repr=False)
    root_token: str = field(default="", repr=False)


class Node:
    """One server process in server mode, with its storage, ports and log in ``folder``."""

    def __init__(self, binary: str, folder: Path, ca: CA, node_id: str, *, mtls_listener: bool = False,
                 join: list[str] | None = None) -> None:
        self.binary, self.folder, self.ca, self.node_id = binary, folder, ca, node_id
        self.port, self.cluster_port = free_port(), free_port()
        self.mtls_port = free_port() if mtls_listener else None
        self.join = join or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys = Keys()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.folder / "raft").mkdir(exist_ok=True, mode=0o700)
        self.tls = ca.issue(f"server-{node_id}", dns=SERVER_NAMES, ips=("127.0.0.1",))
        self.audit_log = self.folder / "audit.log"
        self.log = self.folder / "server.log"
        self._write_config()

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def mtls_addr(self) -> str | None:
        """A second listener that requires a client certificate signed by the CA."""
        return f"https://127.0.0.1:{self.mtls_port}" if self.mtls_port else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _write_config(self) -> None:
        joins = "".join(
            f'  retry_join {{\n    leader_api_addr = "{a}"\n    leader_ca_cert_file = "{self.ca.cert_file}"\n  }}\n'
            for a in self.join
        )
        mtls = ""
        if self.mtls_port:
            mtls = (f'listener "tcp" {{\n  address = "127.0.0.1:{self.mtls_port}"\n  cluster_address = "127.0.0.1:{free_port()}"\n'
                    f'  tls_cert_file = "{self.tls.cert}"\n  tls_key_file = "{self.tls.key}"\n'
                    f'  tls_client_ca_file = "{self.ca.cert_file}"\n  tls_require_and_verify_client_cert = true\n}}\n')
        (self.folder / "server.hcl").write_text(
            f'storage "raft" {{\n  path = "{self.folder / "raft"}"\n  node_id = "{self.node_id}"\n  performance_multiplier = 1\n{joins}}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  cluster_address = "127.0.0.1:{self.cluster_port}"\n'
            f'  tls_cert_file = "{self.tls.cert}"\n  tls_key_file = "{self.tls.key}"\n}}\n'
            f"{mtls}"
            f'api_addr = "{self.addr}"\ncluster_addr = "https://127.0.0.1:{self.cluster_port}"\n'
            "disable_mlock = true\nui = false\nlog_level = \"info\"\n"
        )

    # -- process -----------------------------------------------------------------------------------

    def start(self) -> Node:
        """Start the process (sealed; uninitialised the first time). Returns when the API answers."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.folder)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "server", f"-config={self.folder / 'server.hcl'}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        self.wait(lambda h: h is not None, 60, "the API to answer")
        return self

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM and wait (storage is kept; :meth:`restart` brings the node back)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown (storage is kept)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process hangs, its ports still accept connections that never answer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, *, unseal: bool = True, timeout: float = 60) -> Node:
        """Stop if running, start again with the same storage and ports, and unseal."""
        self.stop()
        self.start()
        if unseal:
            self.unseal()
            self.wait(lambda h: h is not None and not h.get("sealed"), timeout, "unsealed after restart")
        return self

    # -- API -----------------------------------------------------------------------------------------

    def _api(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = {"X-Vault-Token": token} if token else {}
        return requests.request(method, f"{self.addr}/v1/{path}", headers=headers, verify=self.ca.cert_file,
                                timeout=kw.pop("timeout", 10), **kw)

    def health(self) -> dict[str, Any] | None:
        """``sys/health`` (any status code), or None when the node does not answer."""
        try:
            r = self._api("GET", "sys/health", timeout=3)
            return r.json()
        except (requests.RequestException, ValueError):
            return None

    def wait(self, predicate: Any, timeout: float, what: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        health = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise NodeError(f"node {self.node_id} exited with {self.proc.returncode} waiting for {what}:\n{self.tail()}")
            health = self.health()
            if predicate(health):
                return health
            time.sleep(0.2)
        raise NodeError(f"node {self.node_id}: timed out after {timeout}s waiting for {what} (last health: {health})\n{self.tail()}")

    def init(self) -> Keys:
        """``operator init`` with one key share; returns (and keeps) the unseal key and root token."""
        r = self._api("PUT", "sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=60)
        r.raise_for_status()
        body = r.json()
        self.keys = Keys(body["keys_base64"][0], body["root_token"])
        _write_private(self.folder / "init.json", json.dumps({"unseal_key": self.keys.unseal_key,
                                                              "root_token": self.keys.root_token}).encode())
        return self.keys

    def unseal(self, key: str | None = None) -> None:
        r = self._api("PUT", "sys/unseal", json={"key": key or self.keys.unseal_key}, timeout=30)
        r.raise_for_status()

    def seal(self, token: str | None = None) -> None:
        r = self._api("PUT", "sys/seal", token=token or self.keys.root_token, timeout=30)
        r.raise_for_status()

    def wait_active(self, timeout: float = 60) -> None:
        """Until this node is the unsealed active node (health 200)."""
        self.wait(lambda h: bool(h) and h.get("initialized") and not h.get("sealed") and not h.get("standby"),
                  timeout, "active")

    def wait_unsealed(self, timeout: float = 60) -> None:
        self.wait(lambda h: bool(h) and h.get("initialized") and not h.get("sealed"), timeout, "unsealed")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def audit_entries(self, since: int = 0) -> list[dict[str, Any]]:
        """Audit log lines (parsed) from byte offset ``since``; the device is enabled by :func:`start_single`/
        :func:`start_cluster` on every node (Vault replicates the audit table through raft)."""
        try:
            with open(self.audit_log, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def audit_size(self) -> int:
        try:
            return self.audit_log.stat().st_size
        except OSError:
            return 0


def _post_init(node: Node) -> None:
    """What a dev server has and the tests expect: KV v2 at secret/; plus the file audit device."""
    tok = node.keys.root_token
    r = node._api("POST", "sys/mounts/secret", token=tok, json={"type": "kv", "options": {"version": "2"}})
    if r.status_code not in (200, 204):
        raise NodeError(f"enable secret/: {r.status_code} {r.text}")
    r = node._api("PUT", "sys/audit/file", token=tok,
                  json={"type": "file", "options": {"file_path": str(node.audit_log), "mode": "0600"}})
    if r.status_code not in (200, 204):
        raise NodeError(f"enable the file audit device: {r.status_code} {r.text}")


def start_single(binary: str, folder: Path, ca: CA, *, node_id: str = "node1", mtls_listener: bool = True) -> Node:
    """One node: started, initialised, unsealed, active, with secret/ (KV v2) and a file audit device."""
    node = Node(binary, folder, ca, node_id, mtls_listener=mtls_listener)
    node.start()
    try:
        node.init()
        node.unseal()
        node.wait_active()
        _post_init(node)
    except Exception:
        node.kill()
        raise
    return node


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def root_token(self) -> str:
        return self.nodes[0].keys.root_token

    def leader(self, timeout: float = 60) -> Node:
        """The active node, waiting for an election if there is none right now."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                h = node.health()
                if h and h.get("initialized") and not h.get("sealed") and not h.get("standby"):
                    return node
            time.sleep(0.2)
        raise NodeError(f"no active node within {timeout}s")

    def standbys(self) -> list[Node]:
        lead = self.leader()
        return [n for n in self.nodes if n is not lead and n.proc is not None and n.proc.poll() is None]

    def peers(self) -> list[dict[str, Any]]:
        """Raft peers as the leader sees them (node_id, address, voter)."""
        r = self.leader()._api("GET", "sys/storage/raft/configuration", token=self.root_token)
        r.raise_for_status()
        return r.json()["data"]["config"]["servers"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(binary: str, folder: Path, ca: CA, size: int = 3) -> Cluster:
    """``size`` raft nodes on loopback with one CA: node1 is initialised, the others join it
    (``retry_join``) and are unsealed with the same key. Returns once every node is a voter."""
    first = Node(binary, folder / "node1", ca, "node1")
    others = [Node(binary, folder / f"node{i}", ca, f"node{i}", join=[first.addr]) for i in range(2, size + 1)]
    # Every node can join whichever is leader later (a restarted node1 must find the new one).
    for n in [first, *others]:
        n.join = [m.addr for m in [first, *others] if m is not n]
        n._write_config()
    cluster = Cluster([first, *others])
    try:
        first.start()
        first.init()
        first.unseal()
        first.wait_active()
        _post_init(first)
        for n in others:
            n.keys = first.keys
            n.start()
            # A joining node needs the leader's unseal key; retry_join may not have asked yet.
            deadline = time.monotonic() + 60
            while True:
                try:
                    n.unseal()
                except requests.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
                    continue
                h = n.health()
                if h and h.get("initialized") and not h.get("sealed"):
                    break
                if time.monotonic() > deadline:
                    raise NodeError(f"{n.node_id} did not join: {h}\n{n.tail()}")
                time.sleep(0.5)
            n.wait_unsealed()
        _wait_voters(cluster, size)
    except Exception:
        for n in cluster.nodes:
            n.kill()
        raise
    return cluster


def _wait_voters(cluster: Cluster, size: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    servers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            servers = cluster.peers()
            if len([s for s in servers if s.get("voter")]) == size:
                return
        except (requests.RequestException, NodeError):
            pass
        time.sleep(0.5)
    raise NodeError(f"cluster did not reach {size} voters: {servers}")
