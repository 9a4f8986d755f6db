"""The Dockerfile, the compose stack and the Kubernetes manifests, checked with their
ecosystems' own linters and against the running service: nothing in them may name a path,
port, env var or metric that the code does not have. (No Docker engine or cluster here.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml
from helpers import tool

from load_tests.servers import free_port
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"
CRDS = {"ServiceMonitor", "InferenceService"}  # no schemas in kubernetes-validate
SETTINGS_ENV = {f"TENSORGATE_{name.upper()}" for name in Settings.model_fields}
PORT = Settings.model_fields["port"].default
GRPC_PORT = Settings.model_fields["grpc_port"].default


# -- the Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def runtime_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    start = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[start:]


def runtime_env() -> dict[str, str]:
    env = {}
    for op, args in runtime_stage():
        if op == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def exec_form(op: str) -> list[str]:
    (args,) = [args for o, args in runtime_stage() if o == op]
    return json.loads(args.split("CMD", 1)[1] if op == "HEALTHCHECK" else args)


@pytest.mark.tools("hadolint")
def test_hadolint_passes_with_every_ignore_explained():
    done = subprocess.run(
        [tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"line {i + 1}: an ignore needs its reason on the line above"
            )
    assert not (ROOT / ".hadolint.yaml").exists()  # no ignores hidden in a config file


def test_every_copy_source_exists_and_the_build_context_admits_it():
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copies = [args.split() for op, args in dockerfile_instructions() if op == "COPY"]
    local = [words[:-1] for words in copies if not words[0].startswith("--from")]
    assert local, "the Dockerfile copies nothing from the context"
    for sources in local:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_the_image_is_non_root_exposes_the_port_and_uses_exec_form():
    ops = dict(runtime_stage())
    assert ops["USER"] not in ("root", "0")
    assert ops["EXPOSE"] == f"{PORT} {GRPC_PORT}"
    assert runtime_env()["TENSORGATE_PORT"] == str(PORT)
    assert runtime_env()["TENSORGATE_GRPC_PORT"] == str(GRPC_PORT)
    assert runtime_env()["TENSORGATE_HOST"] == "0.0.0.0"
    assert exec_form("CMD") == ["python", "-m", "service"]
    assert "/v2/health/ready" in " ".join(exec_form("HEALTHCHECK"))


def image_env_here(exported: Path, tmp_path: Path) -> dict[str, str]:
    """The image's ENV, mapped onto this machine: its /opt/venv is this virtual environment,
    its baked /models the test repository; it listens on loopback at a free port."""
    env = {**os.environ}
    for key, value in runtime_env().items():
        env[key] = value.replace("/opt/venv", sys.prefix).replace("$PATH", os.environ["PATH"])
    env.update(
        TENSORGATE_HOST="127.0.0.1",
        TENSORGATE_PORT=str(free_port()),
        TENSORGATE_GRPC_PORT=str(free_port()),
        HOME=str(tmp_path),
        TENSORGATE_REPOSITORY=str(exported),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    return env


def test_the_images_command_becomes_ready_passes_its_healthcheck_and_stops_on_sigterm(
    exported, tmp_path
):
    env = image_env_here(exported, tmp_path)
    url = f"http://127.0.0.1:{env['TENSORGATE_PORT']}"
    healthcheck = exec_form("HEALTHCHECK")
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen(exec_form("CMD"), env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0:
            assert process.poll() is None, (tmp_path / "service.log").read_text()
            assert time.monotonic() < deadline, "not ready in 90 s"
            time.sleep(0.5)
        assert requests.get(f"{url}/v2/models/resnet", timeout=5).json()["name"] == "resnet"
    finally:
        process.send_signal(signal.SIGTERM)  # what docker stop sends
        code = process.wait(timeout=45)  # the grace period compose and Kubernetes give it
    assert code == 0, (tmp_path / "service.log").read_text()
    assert subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0


# -- Prometheus, Grafana, compose --------------------------------------------------------


@pytest.mark.tools("promtool")
def test_promtool_accepts_the_prometheus_config_and_rules():
    for args in (
        ["check", "config", DEPLOY / "prometheus" / "prometheus.yml"],
        ["check", "rules", DEPLOY / "prometheus" / "alerts.yml"],
    ):
        done = subprocess.run([tool("promtool"), *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_parses_and_names_only_files_that_exist():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"tensorgate", "prometheus", "grafana"}
    build = compose["services"]["tensorgate"]["build"]
    assert (DEPLOY / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    assert compose["services"]["tensorgate"]["ports"] == [
        f"{PORT}:{PORT}",
        f"{GRPC_PORT}:{GRPC_PORT}",
    ]
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"tensorgate:{PORT}"]


def test_grafana_is_provisioned_with_the_dashboard():
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "tensorgate.json").read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("by code", "p50", "p99", "queue", "batch", "in-flight"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid and panel["targets"]


def referenced_metrics() -> dict[str, set[str]]:
    files = [
        DEPLOY / "prometheus" / "alerts.yml",
        K8S / "hpa.yaml",
        K8S / "adapter" / "values.yaml",
        *(DEPLOY / "grafana" / "dashboards").glob("*.json"),
    ]
    return {f.name: set(re.findall(r"\btensorgate_[a-z_]+\b", f.read_text())) for f in files}


# exposed once a shadow has compared a request: test_rollout.py checks it on its own service
ON_USE = {"tensorgate_shadow_comparisons_total"}


def test_every_metric_named_in_deploy_exists_on_the_running_service(service):
    assert service.post("/v1/models/mlp:predict", json={"instances": [[1.0] * 30]}).ok
    assert service.post("/v1/models/mlp:predict", json={}).status_code == 400  # a rejection
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in service.get("/metrics").text.splitlines()
        if line and not line.startswith("#")
    }
    for source, names in referenced_metrics().items():
        assert names, f"{source} names no tensorgate metric"
        missing = names - exposed - ON_USE
        assert not missing, f"{source} names metrics the service lacks: {missing}"


# -- Kubernetes --------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


@pytest.mark.parametrize(
    ("source", "doc"), manifests(), ids=[f"{s}:{d['kind']}" for s, d in manifests()]
)
def test_every_kubernetes_manifest_validates(source, doc):
    if doc["kind"] in CRDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["name"] == "tensorgate" and doc["spec"]
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomization_lists_files_that_exist():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def containers() -> list[dict]:
    found = []
    for _, doc in manifests():
        if doc["kind"] == "Deployment":
            found += doc["spec"]["template"]["spec"]["containers"]
        elif doc["kind"] == "InferenceService":
            found += doc["spec"]["predictor"]["containers"]
    return found


def test_probes_and_ports_answer_on_the_running_service(service):
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "ServiceMonitor",
        "InferenceService",
    } <= kinds
    probed = set()
    for container in containers():
        ports = {p.get("name", p["containerPort"]): p["containerPort"] for p in container["ports"]}
        assert set(ports.values()) in ({PORT}, {PORT, GRPC_PORT})  # KServe's: HTTP only
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                get = container[probe]["httpGet"]
                assert ports.get(get["port"], get["port"]) == PORT
                probed.add(get["path"])
    assert probed == {"/v2/health/ready", "/v2/health/live"}
    for path in probed:
        assert service.get(path).status_code == 200, path
    (monitor,) = [doc for _, doc in manifests() if doc["kind"] == "ServiceMonitor"]
    (svc,) = [doc for _, doc in manifests() if doc["kind"] == "Service"]
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert service.get(monitor["spec"]["endpoints"][0]["path"]).status_code == 200


def test_the_deployments_run_non_root_on_a_read_only_root_with_a_writable_tmp():
    image_tmp = [v for k, v in runtime_env().items() if k in ("HOME", "PROMETHEUS_MULTIPROC_DIR")]
    assert all(v.startswith("/tmp") for v in image_tmp)
    for _, doc in manifests():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] > 30  # the service drains for up to 30 s
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
    gpu = next(doc for _, doc in manifests() if doc["metadata"]["name"] == "tensorgate-gpu")
    assert (
        gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )


def test_deploy_names_only_env_vars_the_service_reads():
    files = [ROOT / "Dockerfile", *(p for p in DEPLOY.rglob("*") if p.is_file())]
    for path in files:
        names = set(re.findall(r"\bTENSORGATE_[A-Z_]+\b", path.read_text()))
        names -= {"TENSORGATE_VARIANT"}  # compose's own variable: the image to build
        assert names <= SETTINGS_ENV, f"{path.relative_to(ROOT)}: {names - SETTINGS_ENV}"
    config = next(doc for _, doc in manifests() if doc["kind"] == "ConfigMap")
    Settings(**{k.removeprefix("TENSORGATE_").lower(): v for k, v in config["data"].items()})
