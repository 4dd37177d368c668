"""The deployment files in deploy/, checked against the hub they deploy.

No container engine runs here, so these tests read the files: that they parse, and that the
settings, ports, probe paths, metric names and commands they name are the hub's own.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exchange import config, pki
from exchange.cli.main import build_parser
from exchange.server import federation, federation_witness, metrics, subscription_metrics
from exchange.server.workers import check as check_workers
from exchange.server.workers import worker_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "exchange.json"

GRPC_PORT = 7443
METRICS_PORT = 9464
HUB_PORTS = {GRPC_PORT, METRICS_PORT}
PROBE_PATHS = {"/healthz", "/readyz"}
STATE_GAUGES = {
    "exchange_grants",
    "exchange_share_requests_pending",
    "exchange_share_requests_overdue",
    "exchange_share_requests_due_soon",
    "exchange_share_requests_overdue_by_owner",
    "exchange_objections_open",
    "exchange_objections_due_soon",
    "exchange_objections_overdue",
    "exchange_certificate_expiry_timestamp_seconds",
    "exchange_audit_checkpoint_age_seconds",
}
# Every EXCHANGE_* variable the hub reads; any other one stops it at start.
SETTING_VARIABLES = {config.ENV_PREFIX + f.name.upper() for f in dataclasses.fields(config.Settings)} - {
    config.ENV_PREFIX + "SOURCES"
} | {config.ENV_PREFIX + "CONFIG"}


# Reading the files


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _load(path: Path) -> dict[str, Any]:
    (document,) = _documents(path)
    assert isinstance(document, dict), path
    return document


def _port(address: str) -> int:
    """The port of a host:port setting."""
    return int(address.rpartition(":")[2])


def _containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with continuation lines joined and comments dropped."""
    lines = [ln for ln in CONTAINERFILE.read_text(encoding="utf-8").splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _containerfile()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in _final_stage():
        if instruction == "ENV":
            for token in shlex.split(rest):
                name, sep, value = token.partition("=")
                assert sep, f"ENV {token!r}: use NAME=value"
                env[name] = value
    return env


def _image_exec(instruction: str) -> list[str]:
    (rest,) = [rest for ins, rest in _final_stage() if ins == instruction]
    argv = json.loads(rest)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def _interpolate(text: str) -> str:
    """Compose's variable interpolation, taking every default: ${NAME:-default}, ${NAME-default}, $$."""
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)
    assert not re.search(r"(?<!\$)\$\{", text), f"a variable without a default in {text!r}"
    return text.replace("$$", "$")


def _compose() -> dict[str, Any]:
    return _load(DEPLOY / "compose.yaml")


def _compose_hub_services() -> dict[str, dict[str, Any]]:
    """Services that run the hub's image (built from deploy/Containerfile)."""
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return {
        name: s for name, s in services.items() if (s.get("build") or {}).get("dockerfile") == "deploy/Containerfile"
    }


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _k8s_documents() -> list[dict[str, Any]]:
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in _documents(p)]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def _k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in _k8s_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every Deployment and Job."""
    for d in _k8s_documents():
        if d["kind"] in {"Deployment", "Job"}:
            yield d, d["spec"]["template"]["spec"]


def _hub_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every container running the hub's image."""
    for _, spec in _pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if "exchange-hub" in container["image"]:
                yield spec, container


def _hub_deployment() -> dict[str, Any]:
    (deployment,) = _k8s("Deployment", "exchange-hub")
    return deployment


def _configmap() -> dict[str, str]:
    (cm,) = _k8s("ConfigMap", "exchange-hub-settings")
    return {k: str(v) for k, v in cm["data"].items()}


def _secret_data(name: str) -> dict[str, str]:
    (secret,) = _k8s("Secret", name)
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def _k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from its env and envFrom ConfigMaps (Secrets by their placeholders)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "settings come from the ConfigMap"
        (cm,) = _k8s("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in cm["data"].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _secret_data(ref["name"])[ref["key"]]
    return env


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A port given by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert isinstance(number, int)
    return number


def _seconds(duration: str) -> float:
    """A compose/Prometheus duration such as 30s, 1m30s or 1h."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def _load_settings(env: dict[str, str]) -> config.Settings:
    return config.load(environ=env)


def _worker_metrics_ports(settings: config.Settings) -> set[int]:
    """The metrics ports of a hub's workers: metrics_listen's port + i for worker i (exchange/server/workers.py)."""
    return {_port(worker_settings(settings, i).metrics_listen) for i in range(settings.workers)}


def _compose_hub_settings() -> dict[str, config.Settings]:
    """The settings of each compose service that serves a hub."""
    image = _image_env()
    hubs = {n: s for n, s in _compose_hub_services().items() if s.get("command") == ["serve"]}
    return {name: _load_settings({**image, **_compose_env(service)}) for name, service in hubs.items()}


def _k8s_hub_settings() -> config.Settings:
    (hub,) = _hub_deployment()["spec"]["template"]["spec"]["containers"]
    return _load_settings({**_image_env(), **_k8s_env(hub)})


# The files parse


def test_every_file_is_there_and_parses() -> None:
    expected = [
        "Containerfile",
        "compose.yaml",
        "envoy.yaml",
        "README.md",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/dashboards/exchange.json",
        "kubernetes/namespace.yaml",
        "kubernetes/secret.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/service.yaml",
        "kubernetes/pdb.yaml",
    ]
    for name in expected:
        assert (DEPLOY / name).is_file(), name
    files = _yaml_files()
    assert len(files) >= 10
    for path in files:
        documents = _documents(path)
        assert documents, f"{path} is empty"
        assert all(isinstance(d, dict) for d in documents), path
    assert isinstance(json.loads(DASHBOARD.read_text(encoding="utf-8")), dict)
    for doc in _k8s_documents():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "exchange", doc["metadata"]["name"]


def test_containerfile() -> None:
    instructions = _containerfile()
    froms = [rest for ins, rest in instructions if ins == "FROM"]
    assert froms and all(f.startswith("python:3.12-slim") for f in froms)
    final = _final_stage()
    (user,) = [rest for ins, rest in final if ins == "USER"]
    assert user.split(":")[0] not in {"0", "root"}
    assert any(ins == "RUN" and "pip install" in rest for ins, rest in instructions)
    (expose,) = [rest for ins, rest in final if ins == "EXPOSE"]
    assert {int(p.split("/")[0]) for p in expose.split()} == HUB_PORTS
    assert _image_exec("ENTRYPOINT") == ["exchange"]
    assert _image_exec("CMD") == ["serve"]
    (healthcheck,) = [rest for ins, rest in final if ins == "HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert "--start-period=" in options, "the hub needs a while to load its keys and check the store"
    argv = json.loads(command)
    assert argv[0] == "python" and "urllib" in argv[2]
    assert set(re.findall(r"/[a-z]+z\b", argv[2])) == {"/healthz"}
    assert f"':{METRICS_PORT}'" in argv[2], "falls back to the image's metrics port"


# Settings


def test_every_exchange_variable_is_a_real_setting() -> None:
    named: dict[str, set[str]] = {}
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for token in re.findall(r"\bEXCHANGE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")):
            named.setdefault(token, set()).add(str(path.relative_to(DEPLOY)))
    unknown = {k: v for k, v in named.items() if k not in SETTING_VARIABLES}
    assert not unknown, f"not settings of the hub (it refuses them at start): {unknown}"

    # And, structurally, every variable set in the image, compose and Kubernetes.
    variables = set(_image_env())
    for service in _compose_hub_services().values():
        variables |= set(_compose_env(service))
    variables |= set(_configmap())
    for _, container in _hub_containers():
        variables |= {item["name"] for item in container.get("env", [])}
    prefixed = {v for v in variables if v.upper().startswith(config.ENV_PREFIX)}
    assert prefixed <= SETTING_VARIABLES, prefixed - SETTING_VARIABLES
    assert {"EXCHANGE_HOME", "EXCHANGE_LISTEN", "EXCHANGE_METRICS_LISTEN", "EXCHANGE_DATABASE_URL"} <= prefixed


@pytest.fixture
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.load also reads ./exchange.toml: run where there is none."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_config_file")
def test_settings_load_as_each_deployment_gives_them() -> None:
    image = _image_env()
    image_settings = _load_settings(image)
    assert image_settings.home == Path("/var/lib/exchange")
    assert image_settings.listen == f"0.0.0.0:{GRPC_PORT}"
    assert image_settings.metrics_listen == f"0.0.0.0:{METRICS_PORT}"
    defaults = config.Settings()
    assert _port(image_settings.listen) == _port(defaults.listen) == GRPC_PORT
    assert _port(image_settings.metrics_listen) == _port(defaults.metrics_listen) == METRICS_PORT

    for name, service in _compose_hub_services().items():
        settings = _load_settings({**image, **_compose_env(service)})
        assert settings.effective_database_url.startswith("postgresql+psycopg://"), name
        assert (settings.listen, settings.metrics_listen) == (image_settings.listen, image_settings.metrics_listen)

    for _, container in _hub_containers():
        settings = _load_settings({**image, **_k8s_env(container)})
        assert settings.effective_database_url.startswith("postgresql+psycopg://"), container["name"]
        assert _port(settings.listen) == GRPC_PORT and _port(settings.metrics_listen) == METRICS_PORT

    # The hubs in compose and in Kubernetes name their audit log the way init made its key.
    init_env = _compose_env(_compose()["services"]["init"])
    for service in _compose_hub_services().values():
        assert _compose_env(service)["EXCHANGE_AUDIT_ORIGIN"] == init_env["EXCHANGE_AUDIT_ORIGIN"]
    assert "EXCHANGE_AUDIT_ORIGIN" in _configmap()


@pytest.mark.usefixtures("no_config_file")
def test_hubs_get_longer_than_their_shutdown_grace() -> None:
    image = _image_env()
    for name, service in _compose_hub_services().items():
        if service.get("command") != ["serve"]:
            continue
        grace = _load_settings({**image, **_compose_env(service)}).shutdown_grace_seconds
        assert _seconds(service["stop_grace_period"]) > grace + 5, name

    deployment = _hub_deployment()
    spec = deployment["spec"]["template"]["spec"]
    (hub,) = spec["containers"]
    grace = _load_settings({**image, **_k8s_env(hub)}).shutdown_grace_seconds
    pre_stop = hub.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > grace + float(pre_stop[1]) + 5


# Ports and probes


@pytest.mark.usefixtures("no_config_file")
def test_compose_ports() -> None:
    compose = _compose()
    hubs = {n: s for n, s in _compose_hub_services().items() if s.get("command") == ["serve"]}
    assert set(hubs) == {"hub-1", "hub-2"}
    settings = _compose_hub_settings()
    for name, service in hubs.items():
        exposed = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
        published = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
        workers = _worker_metrics_ports(settings[name])
        assert exposed | published <= HUB_PORTS | workers and exposed, name
        assert workers <= exposed, f"{name}: every worker's metrics port is reachable"
        assert "healthcheck" not in service or service["healthcheck"].get("disable") is not True, name
    envoy = compose["services"]["envoy"]
    assert {int(str(p).rsplit(":", 1)[-1]) for p in envoy["ports"]} == {GRPC_PORT}


def test_envoy_passes_tls_through_to_ready_hubs() -> None:
    envoy = _load(DEPLOY / "envoy.yaml")
    resources = envoy["static_resources"]
    (listener,) = resources["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == GRPC_PORT
    (chain,) = listener["filter_chains"]
    assert "transport_socket" not in chain, "TLS ends at the hubs, not at Envoy"
    (proxy,) = chain["filters"]
    assert proxy["name"] == "envoy.filters.network.tcp_proxy"
    (cluster,) = resources["clusters"]
    assert proxy["typed_config"]["cluster"] == cluster["name"]
    assert "transport_socket" not in cluster
    endpoints = [e["endpoint"] for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    hosts = {e["address"]["socket_address"]["address"] for e in endpoints}
    assert hosts == set(_compose_hub_services()) - {"init"}
    for endpoint in endpoints:
        assert endpoint["address"]["socket_address"]["port_value"] == GRPC_PORT
        assert endpoint["health_check_config"]["port_value"] == METRICS_PORT
    (check,) = cluster["health_checks"]
    assert check["http_health_check"]["path"] == "/readyz"


@pytest.mark.usefixtures("no_config_file")
def test_prometheus_scrapes_the_hubs_metrics() -> None:
    prometheus = _load(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = prometheus["scrape_configs"]
    assert jobs
    # One target per worker of each hub: worker i's own /metrics on 9464 + i.
    every_worker = {
        f"{name}:{port}" for name, s in _compose_hub_settings().items() for port in _worker_metrics_ports(s)
    }
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        targets = [t for static in job["static_configs"] for t in static["targets"]]
        assert targets and set(targets) == every_worker, job["job_name"]
    assert [j["job_name"] for j in jobs] == ["exchange-hub"]
    for rule_file in prometheus["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


@pytest.mark.usefixtures("no_config_file")
def test_kubernetes_ports_and_probes() -> None:
    deployment = _hub_deployment()
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == METRICS_PORT
    assert annotations["prometheus.io/path"] == "/metrics"

    containers = list(_hub_containers())
    assert containers
    workers = _worker_metrics_ports(_k8s_hub_settings())
    for _, container in containers:
        for port in container.get("ports", []):
            assert port["containerPort"] in HUB_PORTS | workers, container["name"]
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(probe_name)
            if probe is None:
                continue
            assert _container_port(container, probe["httpGet"]["port"]) == METRICS_PORT
            assert probe["httpGet"]["path"] in PROBE_PATHS

    (hub,) = template["spec"]["containers"]
    worker_ports = {f"metrics-{port - METRICS_PORT}": port for port in workers - {METRICS_PORT}}
    assert {p["name"]: p["containerPort"] for p in hub["ports"]} == {
        "grpc": GRPC_PORT,
        "metrics": METRICS_PORT,
        **worker_ports,
    }
    assert hub["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert hub["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert hub["startupProbe"]["httpGet"]["path"] == "/healthz"

    (service,) = _k8s("Service", "exchange-hub")
    pod_labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = service["spec"]["ports"]
    assert {p["port"] for p in ports} == HUB_PORTS
    for port in ports:
        assert _container_port(hub, port.get("targetPort", port["port"])) == port["port"]


@pytest.mark.usefixtures("no_config_file")
def test_deployed_hubs_run_several_workers_as_they_may() -> None:
    """Compose and Kubernetes run each hub as workers on its one port: PostgreSQL and a fixed port, as required."""
    deployed = [*_compose_hub_settings().values(), _k8s_hub_settings()]
    for settings in deployed:
        assert settings.workers >= 2
        check_workers(settings)  # raises for SQLite, port 0, or metrics ports past 65535
    assert _image_env().get("EXCHANGE_WORKERS", "1") == "1", "the image alone (SQLite by default) runs one process"


# The Kubernetes workload


def test_kubernetes_deployment() -> None:
    deployment = _hub_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for _, container in _hub_containers():
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert {"cpu", "memory"} <= resources["limits"].keys()
        (database,) = [e for e in container["env"] if e["name"] == "EXCHANGE_DATABASE_URL"]
        ref = database["valueFrom"]["secretKeyRef"]
        assert ref["key"] in _secret_data(ref["name"])

    (pdb,) = _k8s("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()

    (job,) = _k8s("Job")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == pod["containers"][0]["image"]


def test_kubernetes_secret_mounts_the_files_the_hub_reads() -> None:
    deployment = _hub_deployment()
    pod = deployment["spec"]["template"]["spec"]
    (hub,) = pod["containers"]
    home = Path(_configmap()["EXCHANGE_HOME"])
    files = pki.HubFiles(home)
    needed = {
        str(path.relative_to(home))
        for path in (
            files.ca_key,
            files.ca_cert,
            files.server_key,
            files.server_cert,
            files.audit_key,
            files.audit_verifier,
            files.audit_subject_key,
        )
    }
    (mount,) = [m for m in hub["volumeMounts"] if m["mountPath"] == str(home)]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert {item["path"] for item in secret["items"]} == needed
    data = _secret_data(secret["secretName"])
    assert {item["key"] for item in secret["items"]} == set(data)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert secret["defaultMode"] & 0o007 == 0, "key files are not world-readable"

    # File backends' documents: a read-only mount at the configured root.
    roots = _configmap()["EXCHANGE_DOCUMENT_ROOTS"].split(",")
    mounted = {m["mountPath"]: m for m in hub["volumeMounts"]}
    for root in roots:
        assert mounted[root].get("readOnly") is True


# Compose


def test_compose_stack() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "init", "hub-1", "hub-2", "envoy", "prometheus", "grafana"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])

    home = _image_env()["EXCHANGE_HOME"]
    init = services["init"]
    assert init["restart"] == "no"
    assert any(v.split(":")[:2] == ["home", home] and not v.endswith(":ro") for v in init["volumes"])
    for name in ("hub-1", "hub-2"):
        hub = services[name]
        assert hub["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert hub["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert f"home:{home}:ro" in hub["volumes"], "hubs read the keys init wrote, read-only"
    script = init["command"][0]
    assert str(pki.HubFiles(Path(home)).ca_key) in script, "init runs once: guarded by the file init checks"

    # Files mounted from this directory exist.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source

    # Grafana loads the dashboards from where compose mounts them, through the provisioned data source.
    (provider,) = _load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "exchange.yml")["providers"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert (DEPLOY / "grafana" / "dashboards" / "exchange.json").is_file()


# Metrics


def _hub_metric_names() -> set[str]:
    """Every series name a hub exposes: its counters and histograms, and the gauges read from the store."""
    names: set[str] = set()
    for line in metrics.HubMetrics().exposition().decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            if name.endswith("_created"):
                continue
            names.add(name)
            if kind == "histogram":
                names |= {name + suffix for suffix in ("_bucket", "_count", "_sum")}
    source = Path(metrics.__file__).read_text(encoding="utf-8")
    state = set(re.findall(r'GaugeMetricFamily\(\s*"(exchange_[a-z0-9_]+)"', source))
    assert state == STATE_GAUGES, "the state gauges changed: update STATE_GAUGES and the alerts"
    for module in (subscription_metrics, federation_witness, federation):
        other = Path(str(module.__file__)).read_text(encoding="utf-8")
        state |= set(re.findall(r'GaugeMetricFamily\(\s*"(exchange_[a-z0-9_]+)"', other))
    return names | state


def _metric_tokens(text: str) -> set[str]:
    return set(re.findall(r"(?<![A-Za-z0-9_])exchange_[a-z0-9_]+", text))


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load(ALERTS)["groups"] for rule in group["rules"]]


def test_metric_names_are_the_hubs() -> None:
    known = _hub_metric_names()
    assert "exchange_exchanges_total" in known and "exchange_exchange_duration_seconds_bucket" in known
    for where, text in (("alerts.yml", ALERTS.read_text(encoding="utf-8")), ("dashboard", DASHBOARD.read_text())):
        used = _metric_tokens(text)
        assert used, where
        assert used <= known, f"{where} uses metrics the hub does not expose: {sorted(used - known)}"
    # Besides the hub's, only Prometheus's own `up`.
    for expr in [r["expr"] for r in _alert_rules()] + _dashboard_exprs():
        others = set(re.findall(r"(?<![A-Za-z0-9_:$.])([a-z][a-z0-9_]*)\s*\{", expr)) - {"up"}
        assert not others - known, expr


def test_alert_rules() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(set(names)) == len(names)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            _seconds(rule["for"])
    used: set[str] = set()
    for rule in rules:
        used |= _metric_tokens(rule["expr"])
    assert {
        "exchange_share_requests_overdue",
        "exchange_share_requests_due_soon",
        "exchange_objections_overdue",
        "exchange_objections_due_soon",
        "exchange_audit_checkpoint_age_seconds",
        "exchange_audit_write_failures_total",
        "exchange_audit_log_intact",
        "exchange_certificate_expiry_timestamp_seconds",
        "exchange_provider_errors_total",
        "exchange_provider_call_duration_seconds_count",
        "exchange_masked_filter_enumerations_total",
        "exchange_audit_index_mismatches",
        "exchange_audit_index_check_failures_total",
        "exchange_calendar_assumed_years",
        "exchange_calendar_covered_through_year",
        "exchange_federation_witnessed_age_seconds",
        "exchange_federation_forks_total",
        "exchange_federation_sync_holder",
    } <= used
    assert any(re.search(r"\bup\{", r["expr"]) for r in rules)


def test_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (datasource,) = _load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    titles = [p["title"] for p in dashboard["panels"]]
    for wanted in (
        "Exchanges per second by outcome",
        "Exchange latency p50 / p99",
        "Provider errors by provider",
        "Audit commit latency",
        "Audit checkpoint age",
        "Overdue share requests",
        "Certificate expiry (days)",
    ):
        assert any(t.startswith(wanted) for t in titles), wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    assert all("histogram_quantile" not in e or "_bucket[" in e for e in _dashboard_exprs())


# Commands


def _script_commands(script: str) -> list[list[str]]:
    """The `exchange ...` command lines in a shell script (one command per line, \\ continuations)."""
    out = []
    for line in re.sub(r"\\\n", " ", script).splitlines():
        tokens = shlex.split(line)
        if tokens and tokens[0] == "exchange":
            out.append(tokens)
    return out


def _deployed_commands() -> list[list[str]]:
    """Every hub command line in the image, compose and Kubernetes."""
    entrypoint = _image_exec("ENTRYPOINT")
    commands = [entrypoint + _image_exec("CMD")]
    for name, service in _compose_hub_services().items():
        if "entrypoint" in service:
            shell, *flags = service["entrypoint"]
            assert shell == "/bin/sh" and set("".join(flags)) <= {"-", "e", "c"}, name
            commands += _script_commands(_interpolate(service["command"][0]))
        else:
            commands.append(entrypoint + list(service["command"]))
    for _, container in _hub_containers():
        commands.append(list(container.get("command", entrypoint)) + list(container.get("args", [])))
    return commands


def test_commands_exist() -> None:
    parser = build_parser()
    seen: set[str] = set()
    for argv in _deployed_commands():
        assert argv[0] == "exchange", argv
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:  # argparse has printed why
            pytest.fail(f"`{shlex.join(argv)}` is not a command the hub's CLI accepts")
        seen.add(args.command)
    assert seen == {"init", "migrate", "serve"}


# promtool, where installed (CI installs it; see the Makefile)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_config_and_rules() -> None:
    for args in (("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")), ("check", "rules", str(ALERTS))):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    pairs = {"job": "exchange-hub", "instance": "hub-1:9464", **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(pairs.items())) + "}", "values": values}


def _alert_case(alert: str, series: list[dict[str, str]], at: str, expected: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in expected]}
        ],
    }


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests, on the rules without their annotations (which promtool would compare)."""
    rules = _load(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    day = 86400
    hub = {"job": "exchange-hub", "instance": "hub-1:9464"}
    cases = [
        # Overdue share requests: after an hour, not before.
        _alert_case(
            "ExchangeShareRequestsOverdue",
            [_series("exchange_share_requests_overdue", "2x90")],
            "30m",
            [],
        ),
        _alert_case(
            "ExchangeShareRequestsOverdue",
            [_series("exchange_share_requests_overdue", "2x90")],
            "65m",
            [{"severity": "warning"}],
        ),
        # Deadlines of owners: per owning department, once for all replicas, after an hour.
        _alert_case(
            "ExchangeObjectionsOverdue",
            [
                _series("exchange_objections_overdue", "1x90", owner_department="D1"),
                _series("exchange_objections_overdue", "1x90", owner_department="D1", instance="hub-2:9464"),
                _series("exchange_objections_overdue", "0x90", owner_department="D2"),
            ],
            "65m",
            [{"severity": "warning", "owner_department": "D1"}],
        ),
        _alert_case(
            "ExchangeObjectionsOverdue",
            [_series("exchange_objections_overdue", "1x90", owner_department="D1")],
            "30m",
            [],
        ),
        _alert_case(
            "ExchangeShareRequestsDueSoon",
            [
                _series("exchange_share_requests_due_soon", "2x90", owner_department="D1"),
                _series("exchange_share_requests_due_soon", "0x90", owner_department="D2"),
            ],
            "65m",
            [{"severity": "warning", "owner_department": "D1"}],
        ),
        _alert_case(
            "ExchangeObjectionsDueSoon",
            [_series("exchange_objections_due_soon", "1x90", owner_department="D2")],
            "65m",
            [{"severity": "warning", "owner_department": "D2"}],
        ),
        # Checkpoints stop while records keep arriving: alert. An idle log ages without alerting.
        _alert_case(
            "ExchangeAuditCheckpointStale",
            [
                _series("exchange_audit_checkpoint_age_seconds", "0+60x30"),
                _series("exchange_audit_records_appended_total", "0+100x30"),
            ],
            "12m",
            [{"severity": "critical"}],
        ),
        _alert_case(
            "ExchangeAuditCheckpointStale",
            [
                _series("exchange_audit_checkpoint_age_seconds", "0+60x30"),
                _series("exchange_audit_records_appended_total", "500x30"),
            ],
            "25m",
            [],
        ),
        # Index differences found by any replica alert at once; none found, no alert.
        _alert_case(
            "ExchangeAuditIndexMismatch",
            [
                _series("exchange_audit_index_mismatches", "0 0 3 3"),
                _series("exchange_audit_index_mismatches", "0x3", instance="hub-2:9464"),
            ],
            "3m",
            [{"severity": "critical"}],
        ),
        _alert_case("ExchangeAuditIndexMismatch", [_series("exchange_audit_index_mismatches", "0x10")], "5m", []),
        _alert_case(
            "ExchangeAuditIndexCheckFailing",
            [_series("exchange_audit_index_check_failures_total", "0 0 1 1 1")],
            "4m",
            [{"severity": "critical", **hub}],
        ),
        _alert_case(
            "ExchangeAuditWriteFailures",
            [_series("exchange_audit_write_failures_total", "0 0 0 1 1 1")],
            "4m",
            [{"severity": "critical", **hub}],
        ),
        _alert_case(
            "ExchangeAuditLogTampered",
            [_series("exchange_audit_log_intact", "1 1 0 0")],
            "3m",
            [{"severity": "critical", **hub}],
        ),
        _alert_case("ExchangeAuditLogTampered", [_series("exchange_audit_log_intact", "1x5")], "4m", []),
        # Certificates: 20 days left alerts, 40 does not.
        _alert_case(
            "ExchangeCertificateExpiringSoon",
            [
                _series("exchange_certificate_expiry_timestamp_seconds", f"{20 * day}x90", principal="system:a"),
                _series("exchange_certificate_expiry_timestamp_seconds", f"{40 * day}x90", principal="system:b"),
            ],
            "70m",
            [{"severity": "warning", "principal": "system:a"}],
        ),
        # A provider failing 6% of calls alerts; one failing 1% does not.
        _alert_case(
            "ExchangeProviderErrorRate",
            [
                _series("exchange_provider_errors_total", "0+6x30", provider="p1", kind="unavailable"),
                _series("exchange_provider_call_duration_seconds_count", "0+100x30", provider="p1"),
                _series("exchange_provider_errors_total", "0+1x30", provider="p2", kind="timeout"),
                _series("exchange_provider_call_duration_seconds_count", "0+100x30", provider="p2"),
            ],
            "20m",
            [{"severity": "warning", "provider": "p1"}],
        ),
        # Guessing masked values: an enumeration refused on one replica alerts, naming who and what.
        _alert_case(
            "ExchangeMaskedValueEnumeration",
            [
                _series(
                    "exchange_masked_filter_enumerations_total", "0 0 3 3 3", consumer_department="d1", resource="r1"
                ),
                _series("exchange_masked_filter_enumerations_total", "5x5", consumer_department="d2", resource="r2"),
            ],
            "4m",
            [{"severity": "warning", "consumer_department": "d1", "resource": "r1"}],
        ),
        # Deadlines counted Monday to Friday through a year with no calendar: after 5 minutes, on that replica.
        _alert_case(
            "ExchangeWorkingDaysAssumed",
            [
                _series("exchange_calendar_assumed_years", "0 0 1x10"),
                _series("exchange_calendar_assumed_years", "0x12", instance="hub-2:9464"),
            ],
            "9m",
            [{"severity": "warning", **hub}],
        ),
        _alert_case("ExchangeWorkingDaysAssumed", [_series("exchange_calendar_assumed_years", "0 0 1x10")], "4m", []),
        # Calendars that end before the year 45 days ahead alert after an hour (promtool's clock starts on
        # 1970-01-01: ending with 1969 alerts, ending with 1970 does not).
        _alert_case(
            "ExchangeHolidayCalendarEnding",
            [
                _series("exchange_calendar_covered_through_year", "1969x90"),
                _series("exchange_calendar_covered_through_year", "1970x90", instance="hub-2:9464"),
            ],
            "70m",
            [{"severity": "warning", **hub}],
        ),
        _alert_case(
            "ExchangeHolidayCalendarEnding", [_series("exchange_calendar_covered_through_year", "1969x90")], "30m", []
        ),
        # The federation's sync lock: none of the hub's processes holding it for 5 minutes alerts, once for all;
        # a holder replaced within a round does not.
        _alert_case(
            "ExchangeFederationNotSyncing",
            [
                _series("exchange_federation_sync_holder", "1 0x10"),
                _series("exchange_federation_sync_holder", "0x11", instance="hub-2:9464"),
            ],
            "8m",
            [{"severity": "warning", "job": "exchange-hub"}],
        ),
        _alert_case("ExchangeFederationNotSyncing", [_series("exchange_federation_sync_holder", "1 0x10")], "4m", []),
        _alert_case(
            "ExchangeFederationNotSyncing",
            [
                _series("exchange_federation_sync_holder", "1 1 0x9"),
                _series("exchange_federation_sync_holder", "0 0 1x9", instance="hub-2:9464"),
            ],
            "8m",
            [],
        ),
        _alert_case("ExchangeHubDown", [_series("up", "1 1 0 0 0 0 0")], "6m", [{"severity": "critical", **hub}]),
        _alert_case("ExchangeNoHubs", [_series("up", "0x10")], "5m", [{"severity": "critical"}]),
        _alert_case(
            "ExchangeNoHubs",
            [_series("up", "0x10"), _series("up", "1x10", instance="hub-2:9464")],
            "5m",
            [],
        ),
    ]
    tests = {"rule_files": [str(tmp_path / "alerts.yml")], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = _promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
