"""The compose stack in compose/: schema-valid, pinned, healthy, no inline secrets, configs that parse.

The compose file is loaded by tools/composecheck, a small Go program around
compose-spec/compose-go (the library `docker compose` itself uses): Compose
specification JSON schema, ${VAR} interpolation from .env.example,
normalisation and the cross-reference checks. It is built once per machine into
~/.cache/vaultsync/composecheck-<compose-go version>-<source hash>/.

OpenBao's init/unseal helper is run against a real server (the binary the
vault_server fixture uses) in server mode with the stack's own config.hcl.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests import dashboards, gotools

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_FRAGMENT = COMPOSE_DIR.parent / ".env.example"  # the one example .env: app keys and every stack variable
TOOL_DIR = ROOT / "tools" / "composecheck"

SERVICES = {
    "openbao", "openbao-init", "vaultsync", "vaultsync-audit", "kafka", "otel-collector", "prometheus", "alertmanager", "loki", "jaeger", "grafana",
}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
MUST_BE_REQUIRED = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
# A whole value that is one ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?msg} or ${VAR?msg}.
INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}$")
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def composecheck() -> Path:
    m = re.search(r"github\.com/compose-spec/compose-go/v2 (v\S+)", (TOOL_DIR / "go.mod").read_text())
    assert m, "tools/composecheck/go.mod does not require compose-go/v2"
    return gotools.build_tool("composecheck", tag=m.group(1))


def _run(argv: list[Any], *, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def project(composecheck: Path) -> dict[str, Any]:
    """The stack as `docker compose config` would resolve it with the example .env values."""
    proc = _run([composecheck, "compose", "-env-file", ENV_FRAGMENT, COMPOSE_FILE])
    assert proc.returncode == 0, f"compose-go rejected {COMPOSE_FILE}:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def raw() -> dict[str, Any]:
    """The compose file as written (anchors merged, nothing interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


STACK_MARKER = "# --- compose stack"


def _stack_start() -> int:
    """Line number of the stack section of .env.example (the app's example keys come before it)."""
    lines = ENV_FRAGMENT.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(STACK_MARKER))


def _env_fragment() -> dict[str, str]:
    """The stack's variables, read with vaultsync's own strict .env parser."""
    from vaultsync import envfile

    start = _stack_start()
    return {e.key: e.value for e in envfile.parse(ENV_FRAGMENT).entries if e.line > start}


def _hcl(composecheck: Path, path: Path) -> dict[str, Any]:
    proc = _run([composecheck, "hcl", path])
    assert proc.returncode == 0, f"{path} is not valid HCL:\n{proc.stderr}"
    return json.loads(proc.stdout)[str(path)]


def _one(block: Any) -> dict[str, Any]:
    """HCL v1 decodes every block as a list of one-element maps/lists; take the single body."""
    while isinstance(block, list):
        assert len(block) == 1, block
        block = block[0]
    return block


def _from_lines(dockerfile: Path) -> list[str]:
    return [ln.split()[1] for ln in dockerfile.read_text().splitlines() if ln.strip().upper().startswith("FROM ")]


def _assert_pinned(ref: str, where: str) -> None:
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    assert tag, f"{where}: image {ref!r} has no tag"
    assert tag != "latest" and not tag.startswith("latest"), f"{where}: image {ref!r} uses latest"
    assert re.search(r"\d", tag), f"{where}: image tag {tag!r} of {ref!r} is not a version"


# --- the compose file itself --------------------------------------------------------------------


def test_compose_file_is_valid_per_compose_spec(project: dict[str, Any]) -> None:
    assert project["name"] == "vaultsync"
    assert set(project["services"]) == SERVICES


def test_composecheck_rejects_what_the_schema_forbids(composecheck: Path, tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a misspelt key fails the schema."""
    broken = COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1)
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(broken)
    proc = _run([composecheck, "compose", "-env-file", ENV_FRAGMENT, bad])
    assert proc.returncode != 0
    assert "healthchek" in proc.stderr


def test_secrets_are_required_from_env(composecheck: Path, tmp_path: Path) -> None:
    """With an empty .env the stack must not load: every secret is ${VAR:?...}."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _run([composecheck, "compose", "-env-file", empty, COMPOSE_FILE])
    assert proc.returncode != 0, "compose file loads without any secret set"
    for var in ("GF_SECURITY_ADMIN_PASSWORD", "GF_SECURITY_SECRET_KEY", "KAFKA_CLUSTER_ID"):
        assert f"required variable {var} is missing a value" in proc.stderr, proc.stderr


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif node is not None:
        yield str(node)


def test_env_fragment_lists_every_variable_with_a_comment(raw: dict[str, Any]) -> None:
    used = {name for text in _strings(raw) for name in VAR_REF.findall(text)}
    values = _env_fragment()
    assert used - set(values) == set(), f"variables the compose file reads but {ENV_FRAGMENT.name} lacks"
    assert set(values) - used == set(), f"variables in {ENV_FRAGMENT.name} that the compose file never reads"
    lines = ENV_FRAGMENT.read_text().splitlines()
    for i, line in enumerate(lines):
        if i >= _stack_start() and line and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("#"), f"{ENV_FRAGMENT.name}: {line!r} has no comment above it"
    for key, value in values.items():
        if MUST_BE_REQUIRED.search(key):
            assert value == "change-me", f"{key} in the example must be a placeholder, not {value!r}"


def test_every_image_is_pinned(project: dict[str, Any]) -> None:
    for name, svc in project["services"].items():
        assert svc.get("image"), f"service {name} has no image name"
        _assert_pinned(svc["image"], f"service {name}")
        build = svc.get("build")
        if build:
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"service {name}: {dockerfile} missing"
            froms = _from_lines(dockerfile)
            assert froms, f"{dockerfile} has no FROM"
            stages = set()
            for line in dockerfile.read_text().splitlines():
                m = re.match(r"\s*FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
                if m:
                    stages.add(m.group(1).lower())
            for ref in froms:
                if ref.lower() not in stages:
                    _assert_pinned(ref, str(dockerfile.relative_to(ROOT)))


def test_every_service_has_a_healthcheck(project: dict[str, Any]) -> None:
    for name, svc in project["services"].items():
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"service {name} has no healthcheck"
        test = hc.get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"service {name}: healthcheck test {test!r}"
        assert hc.get("interval") and hc.get("timeout") and hc.get("retries"), f"service {name}: healthcheck timing"


def test_named_volumes_are_declared_and_used(project: dict[str, Any], raw: dict[str, Any]) -> None:
    declared = set(raw.get("volumes") or {})
    used: dict[str, list[str]] = {}
    for name, svc in project["services"].items():
        for vol in svc.get("volumes") or []:
            if vol["type"] == "volume":
                assert vol["source"] in declared, f"service {name} mounts undeclared volume {vol['source']}"
                used.setdefault(vol["source"], []).append(name)
    assert declared - set(used) == set(), "declared volumes nobody mounts"
    for stateful in ("openbao", "openbao-init", "vaultsync", "kafka", "prometheus", "loki", "jaeger", "grafana"):
        assert any(stateful in users for users in used.values()), f"service {stateful} keeps its state in no named volume"


def test_unseal_material_stays_in_the_init_volume(project: dict[str, Any], raw: dict[str, Any]) -> None:
    mounts = {
        name: [v["source"] for v in svc.get("volumes") or [] if v["type"] == "volume"]
        for name, svc in project["services"].items()
    }
    assert [n for n, srcs in mounts.items() if "openbao-init" in srcs] == ["openbao-init"]
    text = COMPOSE_FILE.read_text() + ENV_FRAGMENT.read_text()
    assert not re.search(r"unseal_keys|root_token|BAO_TOKEN|VAULT_TOKEN", text), "unseal keys/tokens mentioned in compose/.env"
    openbao = project["services"]["openbao"]
    argv = (openbao.get("entrypoint") or []) + (openbao.get("command") or [])
    assert not any(a.startswith("-dev") for a in argv), f"OpenBao runs in dev mode: {argv}"


def test_no_literal_secrets_in_the_compose_file(raw: dict[str, Any]) -> None:
    problems = []
    for name, svc in raw["services"].items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        for key, value in env.items():
            if not SECRETISH.search(key) or value is None:
                continue
            m = INTERPOLATION.match(str(value))
            if not m:
                problems.append(f"{name}.environment.{key} = {value!r} is not a ${{...}} interpolation")
            elif MUST_BE_REQUIRED.search(key) and m.group("op") not in (":?", "?"):
                problems.append(f"{name}.environment.{key} = {value!r} must be required (${{VAR:?msg}}), not defaulted")
        for field in ("command", "entrypoint"):
            args = svc.get(field) or []
            for arg in [args] if isinstance(args, str) else args:
                if re.search(r"(password|secret|token)\s*=", str(arg), re.IGNORECASE):
                    problems.append(f"{name}.{field} carries a credential: {arg!r}")
        assert not svc.get("env_file"), f"{name}: use ${{VAR}} interpolation, not env_file"
    assert not problems, "\n".join(problems)


def test_ports_are_published_on_the_bind_address_only(raw: dict[str, Any]) -> None:
    for name, svc in raw["services"].items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port!r} on every interface"
    assert _env_fragment()["BIND_ADDRESS"] == "127.0.0.1"


def test_kafka_runs_in_kraft_mode(project: dict[str, Any]) -> None:
    assert not any("zookeeper" in n for n in project["services"])
    env = project["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CLUSTER_ID" in env and not any(k.startswith("KAFKA_ZOOKEEPER") for k in env)


# --- mounted config files -----------------------------------------------------------------------


# Host paths a service may read (never write): docker's container logs, for the collector.
HOST_MOUNTS = {"/var/lib/docker/containers"}


def _bind_mounts(project: dict[str, Any]) -> list[tuple[str, Path, str]]:
    """Bind mounts of files shipped in compose/ (the allowed host paths are checked separately)."""
    found = []
    for name, svc in project["services"].items():
        for vol in svc.get("volumes") or []:
            if vol["type"] == "bind" and vol["source"] not in HOST_MOUNTS:
                found.append((name, Path(vol["source"]), vol["target"]))
    return found


def test_host_mounts_are_only_the_allowed_ones_and_read_only(project: dict[str, Any]) -> None:
    host = [(name, vol) for name, svc in project["services"].items() for vol in svc.get("volumes") or []
            if vol["type"] == "bind" and vol["source"] in HOST_MOUNTS]
    assert [(name, vol["source"]) for name, vol in host] == [("otel-collector", "/var/lib/docker/containers")]
    assert all(vol.get("read_only") for _, vol in host)


def _parse_file(path: Path, composecheck: Path) -> None:
    suffix = path.suffix
    if suffix in (".yml", ".yaml"):
        yaml.safe_load(path.read_text())
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".hcl":
        _hcl(composecheck, path)
    elif suffix == ".toml":
        tomllib.loads(path.read_text())
    elif suffix == ".sh":
        proc = _run(["sh", "-n", path])
        assert proc.returncode == 0, f"{path}: {proc.stderr}"
    else:
        pytest.fail(f"don't know how to check {path}")


def test_bind_mounted_files_exist_and_parse(project: dict[str, Any], composecheck: Path) -> None:
    mounts = _bind_mounts(project)
    sources = {s.relative_to(COMPOSE_DIR).as_posix() for _, s, _ in mounts}
    assert sources >= {
        "openbao/config.hcl", "openbao/init-unseal.sh", "vaultsync/vaultsync.toml", "otel/config.yaml",
        "prometheus/prometheus.yml", "prometheus/rules", "loki/config.yaml", "grafana/provisioning", "grafana/dashboards",
    }
    for service, source, target in mounts:
        assert source.exists(), f"{service}: bind source {source} missing"
        assert source.resolve().is_relative_to(COMPOSE_DIR), f"{service}: {source} is outside compose/"
        files = [p for p in sorted(source.rglob("*")) if p.is_file()] if source.is_dir() else [source]
        assert files, f"{service}: {source} is empty"
        for f in files:
            _parse_file(f, composecheck)


def test_openbao_config_is_server_mode_raft_with_prometheus_telemetry(project: dict[str, Any], composecheck: Path) -> None:
    mounts = {t: s for svc, s, t in _bind_mounts(project) if svc == "openbao"}
    cfg = _hcl(composecheck, mounts["/openbao/config/config.hcl"])
    raft = _one(cfg["storage"])["raft"]
    raft = _one(raft)
    data_mount = next(v for v in project["services"]["openbao"]["volumes"] if v["source"] == "openbao-data")
    assert raft["path"].startswith(data_mount["target"]), "raft data is not on the openbao-data volume"
    listener = _one(_one(cfg["listener"])["tcp"])
    assert listener["address"].endswith(":8200")
    assert _one(listener["telemetry"])["unauthenticated_metrics_access"] is True
    telemetry = _one(cfg["telemetry"])
    assert telemetry["prometheus_retention_time"] == "24h"
    assert telemetry["disable_hostname"] is True
    assert cfg["api_addr"] == "http://openbao:8200"


def test_vaultsync_config_loads_with_the_project_loader(project: dict[str, Any]) -> None:
    from vaultsync import config

    mounts = {t: s for svc, s, t in _bind_mounts(project) if svc == "vaultsync"}
    path = mounts["/etc/vaultsync/vaultsync.toml"]
    settings = config.load(path, env={})
    assert settings.vault.addr == "http://openbao:8200"
    assert settings.daemon.metrics_addr == "0.0.0.0:9464"
    assert settings.vault.token is None and settings.vault.token_file is None
    volumes = {v["target"]: v for v in project["services"]["vaultsync"]["volumes"]}
    for f in (settings.auth.role_id_file, settings.auth.secret_id_file):
        assert f and any(f.startswith(t + "/") for t in volumes), f"{f} is on no volume of the vaultsync service"
    for svc in settings.services.values():
        for dest in svc.destinations:
            assert any(dest.path.startswith(t + "/") and v["type"] == "volume" for t, v in volumes.items()), (
                f"destination {dest.path} is not on a named volume"
            )


def test_prometheus_scrapes_the_stack(project: dict[str, Any], composecheck: Path) -> None:
    cfg = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    targets = {
        name: [t for sc in job.get("static_configs", []) for t in sc["targets"]] for name, job in jobs.items()
    }
    assert targets["vaultsync"] == ["vaultsync:9464"]
    assert targets["vaultsync-audit"] == ["vaultsync-audit:9465"]
    assert "0.0.0.0:9465" in project["services"]["vaultsync-audit"]["entrypoint"]
    toml = tomllib.loads((COMPOSE_DIR / "vaultsync" / "vaultsync.toml").read_text())
    assert toml["daemon"]["metrics_addr"].endswith(":9464")
    assert jobs["openbao"]["metrics_path"] == "/v1/sys/metrics"
    assert jobs["openbao"]["params"] == {"format": ["prometheus"]}
    assert targets["openbao"] == ["openbao:8200"]
    otel = yaml.safe_load((COMPOSE_DIR / "otel" / "config.yaml").read_text())
    assert f"otel-collector:{otel['exporters']['prometheus']['endpoint'].rsplit(':', 1)[1]}" in targets["otel-collector"]
    assert cfg["rule_files"] == ["rules/*.yml"]
    for name, hosts in targets.items():
        for t in hosts:
            host = t.rsplit(":", 1)[0]
            assert host == "localhost" or host in project["services"], f"job {name}: {t} is not a compose service"
    mounts = {t: s for svc, s, t in _bind_mounts(project) if svc == "prometheus"}
    assert mounts["/etc/prometheus/prometheus.yml"] == COMPOSE_DIR / "prometheus" / "prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == COMPOSE_DIR / "prometheus" / "rules"


def test_otel_collector_pipelines(project: dict[str, Any]) -> None:
    cfg = yaml.safe_load((COMPOSE_DIR / "otel" / "config.yaml").read_text())
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    pipelines = cfg["service"]["pipelines"]
    for kind, pipe in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for comp in pipe.get(section, []):
                assert comp in (cfg.get(section) or {}), f"pipeline {kind} uses undefined {section[:-1]} {comp}"
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    traces = [cfg["exporters"][e] for e in pipelines["traces"]["exporters"]]
    assert [e["endpoint"] for e in traces] == ["jaeger:4317"]
    logs = [cfg["exporters"][e] for e in pipelines["logs"]["exporters"]]
    assert [e["endpoint"] for e in logs] == ["http://loki:3100/otlp"]
    assert project["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    loki = yaml.safe_load((COMPOSE_DIR / "loki" / "config.yaml").read_text())
    assert loki["server"]["http_listen_port"] == 3100
    assert loki["limits_config"]["allow_structured_metadata"] is True  # needed by Loki's OTLP endpoint
    assert all(c["schema"] == "v13" for c in loki["schema_config"]["configs"])
    assert "health_check" in cfg["service"]["extensions"]
    hc = project["services"]["otel-collector"]["healthcheck"]["test"]
    assert cfg["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1] in hc[-1]


def test_grafana_provisioning_and_dashboard(project: dict[str, Any]) -> None:
    prov = COMPOSE_DIR / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "datasources.yaml").read_text())["datasources"]
    by_type = {d["type"]: d for d in ds}
    assert {"prometheus", "loki"} <= set(by_type)
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["loki"]["url"] == "http://loki:3100"
    for d in ds:
        host = re.match(r"https?://([^:/]+)", d["url"]).group(1)
        assert host in project["services"], f"datasource {d['name']} points at {host}, not a compose service"
    providers = yaml.safe_load((prov / "dashboards" / "dashboards.yaml").read_text())["providers"]
    mounts = {t: s for svc, s, t in _bind_mounts(project) if svc == "grafana"}
    for p in providers:
        assert mounts.get(p["options"]["path"]) == COMPOSE_DIR / "grafana" / "dashboards"

    dash = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "vaultsync.json").read_text())
    uids = {d["uid"] for d in ds}
    exprs = []
    for node in dashboards.nodes(dash):
        if isinstance(node.get("datasource"), dict) and node["datasource"].get("type") in ("prometheus", "loki"):
            assert node["datasource"]["uid"] in uids, f"dashboard uses unknown datasource {node['datasource']}"
        if "expr" in node:
            exprs.append(node["expr"])
    joined = "\n".join(exprs)
    # time left = expiry - time(), leaving out 0 ("never expires")
    assert re.search(r"\(vaultsync_lease_expiry_timestamp_seconds(\{[^}]*\})? > 0\)\s*-\s*time\(\)", joined)
    assert re.search(r"\(vaultsync_token_expiry_timestamp_seconds > 0\)\s*-\s*time\(\)", joined)
    assert re.search(r"rate\(vaultsync_renewals_total", joined)
    assert 'result="failure"' in joined
    assert "vaultsync_render_total" in joined and "vaultsync_last_render_success_timestamp_seconds" in joined
    assert "vaultsync_vault_up" in joined
    titles = [p["title"] for p in dash["panels"]]
    assert len(set(titles)) == len(titles)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


# --- images built from this repository ----------------------------------------------------------


def test_vaultsync_image_runs_the_daemon_as_non_root(project: dict[str, Any]) -> None:
    build = project["services"]["vaultsync"]["build"]
    assert Path(build["context"]) == ROOT
    dockerfile = ROOT / build["dockerfile"]
    text = dockerfile.read_text()
    assert re.match(r"python:3\.11(\.\d+)?-slim", _from_lines(dockerfile)[-1])
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"last USER is {users[-1:]}"
    assert re.search(r"pip install \.", text)
    assert "EXPOSE 9464" in text
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*" and "!vaultsync/" in ignore and "!pyproject.toml" in ignore


def _entrypoint(dockerfile: Path) -> list[str]:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), re.MULTILINE)
    assert m, f"{dockerfile}: no exec-form ENTRYPOINT"
    return json.loads(m.group(1))


def test_vaultsync_entrypoint_is_accepted_by_the_cli(project: dict[str, Any]) -> None:
    """The image's ENTRYPOINT must parse with the real click CLI and reach the `daemon` command."""
    import click

    from vaultsync.cli import main

    argv = _entrypoint(ROOT / project["services"]["vaultsync"]["build"]["dockerfile"])
    assert argv[0] == "vaultsync" and "daemon" in argv
    config_path = argv[argv.index("--config") + 1]
    assert config_path == "/etc/vaultsync/vaultsync.toml"
    mounts = {t for svc, _, t in _bind_mounts(project) if svc == "vaultsync"}
    assert config_path in mounts
    ctx = main.make_context("vaultsync", argv[1:])
    rest = list(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])) + list(ctx.args)
    try:
        name, cmd, sub_args = main.resolve_command(ctx, rest)
    except click.UsageError as exc:
        pytest.fail(f"`{' '.join(argv)}` is not a valid vaultsync command line: {exc}", pytrace=False)
    assert name == "daemon"
    cmd.make_context(name, sub_args, parent=ctx)


def test_otel_image_only_adds_wget(project: dict[str, Any]) -> None:
    svc = project["services"]["otel-collector"]
    dockerfile = Path(svc["build"]["context"]) / svc["build"].get("dockerfile", "Dockerfile")
    froms = _from_lines(dockerfile)
    upstream = froms[-1]
    assert upstream.startswith("otel/opentelemetry-collector-contrib:")
    assert svc["image"].rsplit(":", 1)[1] == upstream.rsplit(":", 1)[1], "local tag must follow the upstream version"
    steps = [ln.split()[0].upper() for ln in dockerfile.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert steps.count("RUN") == 0 and steps.count("COPY") == 1


# --- the init/unseal helper against a real server -----------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, binary: str, config: Path, log: Path, env: dict[str, str]) -> None:
        self.binary, self.config, self.log, self.env = binary, config, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "server", f"-config={self.config}"], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _seal_status(addr: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(f"{addr}/v1/sys/seal-status", timeout=2).json()
        except (requests.RequestException, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _run_helper_until(env: dict[str, str], message: str, timeout: float = 60) -> str:
    """Run the init/unseal helper until its log says ``message`` (it keeps watching: then SIGTERM it)."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(["sh", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + timeout
            while message not in (err := (log.seek(0), log.read())[1]):
                assert proc.poll() is None, f"the helper exited {proc.returncode}:\n{err}"
                assert time.monotonic() < deadline, f"no {message!r} from the helper within {timeout}s:\n{err}"
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        log.seek(0)
        return log.read()


@pytest.fixture
def stack_server(tmp_path: Path, composecheck: Path):
    """A real Vault/OpenBao in server mode, started from compose/openbao/config.hcl (addresses and paths localised)."""
    from vaultsync import devserver
    from vaultsync.errors import VaultsyncError

    try:
        binary = devserver.find_server_binary()
    except VaultsyncError as exc:
        pytest.fail(f"no Vault/OpenBao binary for the init/unseal test: {exc}", pytrace=False)
    port, cport = _free_port(), _free_port()
    src = (COMPOSE_DIR / "openbao" / "config.hcl").read_text()
    raft = tmp_path / "raft"
    raft.mkdir()
    replacements = {
        '"/openbao/file"': f'"{raft}"',
        '"0.0.0.0:8200"': f'"127.0.0.1:{port}"',
        '"0.0.0.0:8201"': f'"127.0.0.1:{cport}"',
        '"http://openbao:8200"': f'"http://127.0.0.1:{port}"',
        '"http://openbao:8201"': f'"http://127.0.0.1:{cport}"',
        '"/openbao/logs/audit.log"': f'"{tmp_path / "audit.log"}"',  # honoured by OpenBao >= 2.4 only
    }
    for old, new in replacements.items():
        assert old in src, f"config.hcl no longer contains {old}; update this test"
        src = src.replace(old, new)
    config = tmp_path / "config.hcl"
    config.write_text(src)
    _hcl(composecheck, config)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bao").symlink_to(binary)  # the script calls `bao`, as in the openbao image
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(home)}
    server = _Server(binary, config, tmp_path / "server.log", env)
    server.start()
    server.addr = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    server.script_env = {  # type: ignore[attr-defined]
        **env, "BAO_ADDR": server.addr, "BAO_INIT_DIR": str(tmp_path / "init"), "BAO_UNSEAL_INTERVAL": "1",
        "BAO_AUDIT_FILE": str(tmp_path / "audit.log"),
    }
    try:
        _seal_status(server.addr)  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


SCRIPT = COMPOSE_DIR / "openbao" / "init-unseal.sh"


def test_init_unseal_initialises_once_and_unseals_every_start(stack_server, tmp_path: Path) -> None:
    addr, env = stack_server.addr, stack_server.script_env
    assert _seal_status(addr)["initialized"] is False
    run = _run(["sh", SCRIPT], env={**env, "BAO_INIT_ONESHOT": "1"}, timeout=120)
    assert run.returncode == 0, run.stderr + "\n--- server ---\n" + Path(stack_server.log).read_text()[-3000:]
    status = _seal_status(addr)
    assert status["initialized"] is True and status["sealed"] is False, status

    state = Path(env["BAO_INIT_DIR"])
    init_file = state / "init.json"
    assert state.stat().st_mode & 0o777 == 0o700
    assert init_file.stat().st_mode & 0o777 == 0o600
    init = json.loads(init_file.read_text())
    assert len(init["unseal_keys_b64"]) == 1 and init["root_token"]
    for secret in (*init["unseal_keys_b64"], init["root_token"]):
        assert secret not in run.stderr and secret not in run.stdout, "unseal material leaked into the log"

    # The metrics endpoint Prometheus scrapes answers without a token.
    r = requests.get(f"{addr}/v1/sys/metrics", params={"format": "prometheus"}, timeout=5)
    assert r.status_code == 200 and "vault_" in r.text

    # Restart: the server comes back sealed; the watching helper unseals it with the same keys.
    before = init_file.read_bytes()
    watcher = subprocess.Popen(["sh", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stack_server.stop()
        stack_server.start()  # raft storage, no auto-unseal: it always comes back sealed
        # (no "is sealed" check here: the running helper may already have unsealed it)
        deadline = time.monotonic() + 30
        while _seal_status(addr)["sealed"] and time.monotonic() < deadline:
            time.sleep(0.3)
        unsealed = _seal_status(addr)["sealed"] is False
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=10)
    assert unsealed, f"the helper did not unseal the restarted server:\n{err}"
    assert watcher.returncode == 0, err
    assert "server is sealed: unsealing" in err  # it was the helper (its "unsealed" line may race the SIGTERM)
    assert init_file.read_bytes() == before, "the helper initialised the server a second time"
    r = requests.get(f"{addr}/v1/sys/health", timeout=5)
    assert r.status_code == 200, r.text  # what the openbao healthcheck asks for


def test_init_unseal_never_replaces_an_existing_key_file(stack_server) -> None:
    """Server says "not initialised" (wiped, or mid-restart) but keys exist: leave both alone."""
    addr, env = stack_server.addr, stack_server.script_env
    state = Path(env["BAO_INIT_DIR"])
    state.mkdir(mode=0o700)
    keys = state / "init.json"
    keys.write_text('{"unseal_keys_b64": ["a2VlcC1tZS1rZWVwLW1lLWtlZXAtbWU="], "root_token": "keep-me"}')
    before = keys.read_bytes()
    _run_helper_until(env, "doing nothing")
    assert keys.read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["init.json"]
    assert _seal_status(addr)["initialized"] is False


def test_init_unseal_refuses_to_guess_without_its_keys(stack_server) -> None:
    """Initialised elsewhere, key file absent: report and keep waiting, never re-init or crash."""
    addr, env = stack_server.addr, stack_server.script_env
    init = requests.put(f"{addr}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
    assert init.status_code == 200, init.text
    _run_helper_until(env, "init.json is missing")
    assert _seal_status(addr)["sealed"] is True
    assert not (Path(env["BAO_INIT_DIR"]) / "init.json").exists()


def test_init_unseal_enables_two_audit_devices_once(stack_server, tmp_path: Path) -> None:
    """After unsealing, a file audit device (JSON, read by `vaultsync audit`) and a second one (stdout) exist."""
    addr, env = stack_server.addr, stack_server.script_env
    run = _run(["sh", SCRIPT], env={**env, "BAO_INIT_ONESHOT": "1"}, timeout=120)
    assert run.returncode == 0, run.stderr
    root = json.loads((Path(env["BAO_INIT_DIR"]) / "init.json").read_text())["root_token"]
    assert root not in run.stderr
    devices = requests.get(f"{addr}/v1/sys/audit", headers={"X-Vault-Token": root}, timeout=5).json()["data"]
    assert {path: (d["type"], d["options"]["file_path"]) for path, d in devices.items()} == {
        "file/": ("file", env["BAO_AUDIT_FILE"]), "stdout/": ("file", "stdout")}, run.stderr
    assert "audit devices: enabled file/" in run.stderr

    # The file is the JSON audit log `vaultsync audit` reads: a refused read shows up as denied.
    r = requests.get(f"{addr}/v1/secret/data/nope", headers={"X-Vault-Token": "not-a-token"}, timeout=5)
    assert r.status_code == 403
    audit_log = Path(env["BAO_AUDIT_FILE"])
    assert audit_log.stat().st_mode & 0o777 == 0o640  # the server's group reads it (vaultsync-audit)
    res = _run([sys.executable, "-m", "vaultsync", "audit", audit_log, "--since", "1h", "--output", "json"],
               env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["skipped"] == {} and report["counted"] >= 3
    assert sum(s["denied"] for s in report["services"].values()) == 1
    assert "not-a-token" not in audit_log.read_text()  # HMAC'd

    # Run again (a restart of the stack): the devices are found, not enabled twice.
    again = _run(["sh", SCRIPT], env={**env, "BAO_INIT_ONESHOT": "1"}, timeout=120)
    assert again.returncode == 0 and "audit devices: 2 already enabled" in again.stderr, again.stderr


def test_audit_log_is_collected_with_few_labels(project: dict[str, Any]) -> None:
    """The file audit device's path (config.hcl) is what the collector tails, from the volume both mount;
    only mount/operation/outcome become Loki index labels."""
    hcl = (COMPOSE_DIR / "openbao" / "config.hcl").read_text()
    audit_path = re.search(r'audit "file" "file" \{.*?file_path\s*=\s*"([^"]+)"', hcl, re.S).group(1)
    assert re.search(r'audit "file" "stdout" \{.*?file_path\s*=\s*"stdout"', hcl, re.S), "no second audit device"
    assert not re.search(r"^\s*log_raw\s*=", hcl, re.M), "audit values must stay HMAC'd"
    mounts = {name: {v["target"]: v for v in svc.get("volumes") or []} for name, svc in project["services"].items()}
    server_vol = next(v for t, v in mounts["openbao"].items() if audit_path.startswith(t + "/"))
    cfg = yaml.safe_load((COMPOSE_DIR / "otel" / "config.yaml").read_text())
    receiver = cfg["receivers"]["filelog/openbao-audit"]
    (include,) = receiver["include"]
    collector_vol = next(v for t, v in mounts["otel-collector"].items() if include.startswith(t + "/"))
    assert collector_vol["source"] == server_vol["source"] and collector_vol.get("read_only")
    assert include.rsplit("/", 1)[1] == audit_path.rsplit("/", 1)[1]
    assert "filelog/openbao-audit" in cfg["service"]["pipelines"]["logs"]["receivers"]
    assert receiver["storage"] in cfg["service"]["extensions"]
    ops = receiver["operators"]
    assert ops[0]["type"] == "json_parser"
    labels = {op["field"].split('"')[1] for op in ops if op["type"] == "add" and op["field"].startswith("resource[")}
    assert labels == {"service.name", "mount", "operation", "outcome"}
    loki = yaml.safe_load((COMPOSE_DIR / "loki" / "config.yaml").read_text())
    indexed = loki["limits_config"]["otlp_config"]["resource_attributes"]["attributes_config"]
    assert indexed == [{"action": "index_label", "attributes": ["mount", "operation", "outcome"]}]
