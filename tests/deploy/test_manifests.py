"""deploy/: the Kubernetes and KServe manifests, checked offline.

1. Every Kubernetes manifest against the official schemas that kubernetes-validate bundles,
   strictly (an unknown field is an error), for the oldest and newest Kubernetes we claim.
2. The KServe manifests against KServe's own CRD schemas (a pruned copy in schemas/, made by
   vendor_kserve_schemas.py; support.crd_schema reads them with the API server's rules).
3. The contract between the files and the server: probes ask the health services the server
   publishes, on the port it listens on; the grace period covers the whole drain; the CPU limit
   matches onnxruntime's threads; the Services, HPA and PDB find the pods; every BNSERVE_*
   name is a server setting.

Each validator and each contract rule is also shown a broken copy that it must refuse.
Nothing here needs a cluster or the network.
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml

from bnserve.server.settings import ServerSettings
from support.crd_schema import crd_json_schema, problems, to_json_schema, validator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_DIR = DEPLOY / "kubernetes"
KSERVE_DIR = DEPLOY / "kserve"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The oldest Kubernetes these manifests claim (grpc probes are GA since 1.27) and the newest
# the pinned kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
LIVENESS_SERVICE = ""  # the server as a whole: up and not shutting down
READINESS_SERVICE = "inference.GRPCInferenceService"  # ServerReady
MIN_STARTUP_BUDGET_S = 120  # model load + batch-independence check + warm-up
MARGIN_S = 3  # between the end of the drain and the kubelet's SIGKILL
WRITABLE = ("/tmp", "/home/bnserve")  # emptyDirs on a read-only root: scratch, onnxruntime's $HOME
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # KServe's InferenceServiceProtocol
DEFAULT_GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds

# Settings the server is gaining in issue 7, in parallel with these manifests: accepted here
# until ServerSettings has them.


def load_documents(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every document of every manifest in ``folder``."""
    found = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":  # kustomize's input, not an API object
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


K8S_DOCS = load_documents(KUBERNETES_DIR)
KSERVE_DOCS = load_documents(KSERVE_DIR)


# --- 1. Kubernetes' own schemas ---------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", K8S_DOCS, ids=doc_id)
def test_kubernetes_manifest_matches_the_official_schema(item, version):
    # It answers the version whose schemas it used: never an older one in silence.
    assert kubernetes_validate.validate(item[1], version, strict=True) == version


def _deployment() -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in K8S_DOCS if doc["kind"] == "Deployment"))


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("break_it", [
    lambda d: _container(d).update(imagePullPolicyy="Always"),  # unknown field
    lambda d: _container(d)["ports"][0].update(containerPort="8001"),  # wrong type
    lambda d: _container(d)["readinessProbe"]["grpc"].update(servce=READINESS_SERVICE),  # nested
    lambda d: d["spec"].update(replicas="two"),  # wrong type at the top
], ids=["unknown field", "port as a string", "misspelt probe field", "replicas as a string"])
def test_the_kubernetes_validator_refuses_a_broken_copy(break_it):
    deployment = _deployment()
    break_it(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


# --- 2. KServe's CRD schemas --------------------------------------------------------------


@cache
def kserve_validator(kind: str) -> jsonschema.Validator:
    (path,) = SCHEMAS.glob(f"{kind.lower()}-*.json")
    vendored = json.loads(path.read_text())
    # ObjectMeta as Kubernetes itself defines it, from kubernetes-validate's strict schemas.
    folder = f"v{KUBERNETES_VERSIONS[-1]}.0-local-strict"
    definitions = json.loads((importlib.resources.files("kubernetes_validate")
                              / "kubernetes-json-schema" / folder / "_definitions.json").read_text())
    object_meta = {"$ref": f"{definitions['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return validator(crd_json_schema(vendored, object_meta), definitions)


@pytest.mark.parametrize("item", KSERVE_DOCS, ids=doc_id)
def test_kserve_manifest_matches_kserves_crd(item):
    assert problems(kserve_validator(item[1]["kind"]), item[1]) == []


def test_the_vendored_schemas_name_their_source():
    for path in SCHEMAS.glob("*.json"):
        source = json.loads(path.read_text())["source"]
        assert source["repository"] == "https://github.com/kserve/kserve", path
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), path
        assert source["license"] == "Apache-2.0", path
    assert "Apache License" in (SCHEMAS / "LICENSE-kserve").read_text()


def test_the_vendored_schemas_are_what_the_vendoring_script_keeps():
    script = Path(__file__).with_name("vendor_kserve_schemas.py")
    spec = importlib.util.spec_from_file_location("vendor_kserve_schemas", script)
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    for kind, (path, version, keep) in vendor.CRDS.items():
        vendored = json.loads((SCHEMAS / f"{kind.lower()}-{version}.json").read_text())
        assert (vendored["source"]["path"], vendored["kept"]) == (path, keep), "re-run the script"
        schema = vendored["openAPIV3Schema"]
        assert vendor.prune(schema, [p.split(".") for p in keep]) == schema


def _kserve(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in KSERVE_DOCS if doc["kind"] == kind))


def _model(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]["model"]


@pytest.mark.parametrize(("kind", "break_it", "expected"), [
    ("InferenceService", lambda d: _model(d).update(storageURI="pvc://x"), "storageURI"),
    ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas="2"), "not of type"),
    ("InferenceService", lambda d: d["spec"]["predictor"].update(scaleMetric="gpu"), "is not one of"),
    ("InferenceService", lambda d: d["spec"]["predictor"].update(sklearn={}), "not vendored"),
    ("InferenceService", lambda d: d["metadata"].update(nmae="x"), "nmae"),
    ("InferenceService", lambda d: d.update(apiVersion="serving.kserve.io/v1"), "was expected"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0].update(imagePullPolicyy="x"),
     "imagePullPolicyy"),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0]["ports"][0].update(containerPort="8001"),
     "not of type"),
    ("ServingRuntime", lambda d: d["spec"]["supportedModelFormats"][0].update(autoSelect="yes"),
     "not of type"),
], ids=["unknown field", "wrong type", "not in the enum", "not vendored", "ObjectMeta field",
        "wrong apiVersion", "runtime unknown field", "runtime wrong type", "runtime bool"])
def test_the_kserve_validator_refuses_a_broken_copy(kind, break_it, expected):
    doc = _kserve(kind)
    break_it(doc)
    found = problems(kserve_validator(kind), doc)
    assert any(expected in problem for problem in found), found


def test_the_converter_follows_structural_schema_rules():
    closed = to_json_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    open_ = to_json_schema({"type": "object", "properties": {"a": {"type": "string"}},
                            "x-kubernetes-preserve-unknown-fields": True})
    mapping = to_json_schema({"type": "object", "additionalProperties": {"type": "integer"}})
    nullable = to_json_schema({"type": "string", "nullable": True})
    int_or_string = to_json_schema({"anyOf": [{"type": "integer"}, {"type": "string"}],
                                    "x-kubernetes-int-or-string": True})
    embedded = to_json_schema({"type": "object", "x-kubernetes-embedded-resource": True,
                               "properties": {"spec": {"type": "object"}}})

    def ok(schema: dict[str, Any], value: Any) -> bool:
        return jsonschema.Draft202012Validator(schema).is_valid(value)

    assert ok(closed, {"a": "x"}) and not ok(closed, {"a": "x", "b": 1})
    assert ok(open_, {"a": "x", "b": 1}) and not ok(open_, {"a": 1})
    assert ok(mapping, {"any": 1}) and not ok(mapping, {"any": "1"})
    assert ok(nullable, None) and not ok(to_json_schema({"type": "string"}), None)
    assert ok(int_or_string, 1) and ok(int_or_string, "50%") and not ok(int_or_string, 1.5)
    assert ok(embedded, {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {}})
    assert not ok(embedded, {"spec": {"x": 1}})  # nested objects are closed too


# --- 3. The contract between the files and the server ----------------------------------


@dataclass
class Manifests:
    deployment: dict[str, Any]
    headless: dict[str, Any]
    service: dict[str, Any]
    hpa: dict[str, Any]
    pdb: dict[str, Any]
    pvc: dict[str, Any]
    kustomization: dict[str, Any]
    runtime: dict[str, Any]
    isvc: dict[str, Any]
    k8s_files: set[str]


def load_manifests() -> Manifests:
    def one(docs: list[tuple[str, dict[str, Any]]], kind: str, test=lambda d: True) -> dict[str, Any]:
        (doc,) = [d for _, d in docs if d["kind"] == kind and test(d)]
        return copy.deepcopy(doc)

    return Manifests(
        deployment=one(K8S_DOCS, "Deployment"),
        headless=one(K8S_DOCS, "Service", lambda d: d["spec"].get("clusterIP") == "None"),
        service=one(K8S_DOCS, "Service", lambda d: d["spec"].get("clusterIP") != "None"),
        hpa=one(K8S_DOCS, "HorizontalPodAutoscaler"),
        pdb=one(K8S_DOCS, "PodDisruptionBudget"),
        pvc=one(K8S_DOCS, "PersistentVolumeClaim"),
        kustomization=yaml.safe_load((KUBERNETES_DIR / "kustomization.yaml").read_text()),
        runtime=one(KSERVE_DOCS, "ServingRuntime"),
        isvc=one(KSERVE_DOCS, "InferenceService"),
        k8s_files={name for name, _ in K8S_DOCS},
    )


def image_uid() -> int:
    """The numeric user the image runs as (its Dockerfile's last USER)."""
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return int(users[-1])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def ports_of(container: dict[str, Any]) -> dict[str, int]:
    return {p.get("name", ""): p["containerPort"] for p in container.get("ports", [])}


def cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def listen_problems(where: str, container: dict[str, Any], grpc_port: int) -> list[str]:
    found = []
    env, ports = env_of(container), ports_of(container)
    if container.get("args") != ["serve"]:
        found.append(f"{where}: args must be ['serve']: a flag would win over its BNSERVE_* variable")
    if env.get("BNSERVE_PORT") != str(grpc_port):
        found.append(f"{where}: BNSERVE_PORT {env.get('BNSERVE_PORT')} is not the gRPC port {grpc_port}")
    for name in ("BNSERVE_HOST", "BNSERVE_METRICS_HOST"):
        if env.get(name) != "0.0.0.0":
            found.append(f"{where}: {name} must be 0.0.0.0: probes and scrapes come to the pod's IP")
    if "metrics" in ports and env.get("BNSERVE_METRICS_PORT") != str(ports["metrics"]):
        found.append(f"{where}: BNSERVE_METRICS_PORT is not the metrics port {ports['metrics']}")
    return found


def probe_problems(where: str, container: dict[str, Any], grpc_port: int) -> list[str]:
    found = []
    wanted = {"startupProbe": LIVENESS_SERVICE, "livenessProbe": LIVENESS_SERVICE,
              "readinessProbe": READINESS_SERVICE}
    for name, service in wanted.items():
        probe = container.get(name)
        if not probe or "grpc" not in probe:
            found.append(f"{where}: {name} must be a grpc probe")
            continue
        asked = probe["grpc"].get("service", "")  # absent = "" (Kubernetes' default)
        if asked != service:
            found.append(f"{where}: {name} asks service {asked!r}, not {service!r}")
        if probe["grpc"]["port"] != grpc_port:
            found.append(f"{where}: {name} probes port {probe['grpc']['port']}, not {grpc_port}")
    startup = container.get("startupProbe", {})
    budget = startup.get("failureThreshold", 3) * startup.get("periodSeconds", 10)
    if budget < MIN_STARTUP_BUDGET_S:
        found.append(f"{where}: the startup probe gives up after {budget} s")
    return found


def shutdown_problems(where: str, container: dict[str, Any], grace_s: int) -> list[str]:
    env = env_of(container)
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) != 2 or command[0] != "sleep" or not command[1].isdigit():
        return [f"{where}: preStop must be exec ['sleep', N]"]
    found = []
    pre_stop = int(command[1])
    after_sigterm = float(env.get("BNSERVE_DRAIN_WINDOW_S", "nan")) \
        + float(env.get("BNSERVE_SHUTDOWN_GRACE_S", "nan"))
    if not grace_s >= pre_stop + after_sigterm + MARGIN_S:
        found.append(f"{where}: terminationGracePeriodSeconds {grace_s} < preStop + drain window + "
                     f"shutdown grace + {MARGIN_S} s = {pre_stop + after_sigterm + MARGIN_S}")
    # From SIGTERM on, "" answers NOT_SERVING; a kubelet that still probes a terminating pod
    # must not reach the liveness threshold before the server has exited by itself.
    liveness = container.get("livenessProbe", {})
    to_kill = (liveness.get("failureThreshold", 3) - 1) * liveness.get("periodSeconds", 10)
    if not to_kill > after_sigterm:
        found.append(f"{where}: the liveness probe could kill the server {to_kill} s into its drain")
    return found


def resource_problems(where: str, container: dict[str, Any]) -> list[str]:
    found = []
    resources = container.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    threads = env_of(container).get("BNSERVE_INTRA_OP_THREADS", "nan")
    if "cpu" not in limits or cpus(requests.get("cpu", 0)) != cpus(limits["cpu"]):
        found.append(f"{where}: the CPU request must equal the CPU limit")
    elif cpus(limits["cpu"]) != float(threads):
        found.append(f"{where}: BNSERVE_INTRA_OP_THREADS {threads} is not the CPU limit {limits['cpu']}")
    if "memory" not in limits or requests.get("memory") != limits["memory"]:
        found.append(f"{where}: the memory request must equal the limit (Guaranteed QoS)")
    return found


def security_problems(where: str, pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    found = []
    security, pod_security = container.get("securityContext", {}), pod.get("securityContext", {})
    wanted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "runAsNonRoot": True, "runAsUser": image_uid()}
    for key, value in wanted.items():
        if security.get(key, pod_security.get(key)) != value:
            found.append(f"{where}: securityContext.{key} must be {value}")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        found.append(f"{where}: securityContext.capabilities.drop must be ['ALL']")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    for path in WRITABLE:
        mount = mounts.get(path)
        if not mount or "emptyDir" not in volumes.get(mount["name"], {}) or mount.get("readOnly"):
            found.append(f"{where}: {path} must be a writable emptyDir")
    return found


def server_problems(where: str, pod: dict[str, Any], container: dict[str, Any], grpc_port_name: str,
                    grace_s: int) -> list[str]:
    """What the server's container needs wherever it runs: the Deployment, the KServe runtime."""
    grpc_port = ports_of(container).get(grpc_port_name)
    if grpc_port is None:
        return [f"{where}: no container port named {grpc_port_name}"]
    return [*listen_problems(where, container, grpc_port),
            *probe_problems(where, container, grpc_port),
            *shutdown_problems(where, container, grace_s),
            *resource_problems(where, container),
            *security_problems(where, pod, container)]


def deployment_problems(m: Manifests) -> list[str]:
    pod = m.deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    found = server_problems("Deployment", pod, container, "grpc",
                            pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
    if pod.get("enableServiceLinks") is not False:
        found.append("Deployment: enableServiceLinks must be false (Service links inject BNSERVE_*_PORT)")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {mt["mountPath"]: mt for mt in container.get("volumeMounts", [])}
    models = mounts.get(env_of(container).get("BNSERVE_REPOSITORY", ""))
    claim = volumes.get(models["name"], {}).get("persistentVolumeClaim", {}) if models else {}
    if not models or not models.get("readOnly") or claim.get("claimName") != m.pvc["metadata"]["name"]:
        found.append("Deployment: BNSERVE_REPOSITORY must be a read-only mount of the bnserve-models claim")
    if not selects(m.deployment["spec"]["selector"].get("matchLabels", {}), pod_labels(m)):
        found.append("Deployment: its selector does not select its own pods")
    return found


def pod_labels(m: Manifests) -> dict[str, str]:
    return m.deployment["spec"]["template"]["metadata"]["labels"]


def service_problems(m: Manifests) -> list[str]:
    found = []
    ports = ports_of(m.deployment["spec"]["template"]["spec"]["containers"][0])
    for service in (m.headless, m.service):
        where = f"Service {service['metadata']['name']}"
        if not selects(service["spec"].get("selector", {}), pod_labels(m)):
            found.append(f"{where}: does not select the Deployment's pods")
        grpc = {p.get("name"): p for p in service["spec"]["ports"]}.get("grpc", {})
        target = grpc.get("targetPort", grpc.get("port"))
        if ports.get(target, target) != ports["grpc"] or grpc.get("appProtocol") != "kubernetes.io/h2c":
            found.append(f"{where}: needs port grpc to the container's gRPC port, "
                         "appProtocol kubernetes.io/h2c")
    # No proxy behind a headless Service: clients dial the pods at the port they are given.
    if m.headless["spec"]["ports"][0]["port"] != ports["grpc"]:
        found.append("Service bnserve-headless: its port must be the container's (no proxy maps it)")
    return found


def scaling_problems(m: Manifests) -> list[str]:
    found = []
    hpa = m.hpa["spec"]
    target = hpa["scaleTargetRef"]
    if (target.get("apiVersion"), target["kind"], target["name"]) != (
            "apps/v1", "Deployment", m.deployment["metadata"]["name"]):
        found.append("HorizontalPodAutoscaler: does not target the Deployment")
    if not any(x.get("resource", {}).get("name") == "cpu" and x["resource"]["target"]["type"] == "Utilization"
               for x in hpa.get("metrics", [])):
        found.append("HorizontalPodAutoscaler: needs a cpu Utilization metric")
    if hpa.get("minReplicas", 1) < 2:
        found.append("HorizontalPodAutoscaler: minReplicas must be at least 2")
    if not hpa.get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds"):
        found.append("HorizontalPodAutoscaler: needs a scaleDown stabilization window")
    if not selects(m.pdb["spec"]["selector"].get("matchLabels", {}), pod_labels(m)):
        found.append("PodDisruptionBudget: does not select the Deployment's pods")
    if m.pdb["spec"].get("minAvailable", 0) >= hpa.get("minReplicas", 1):
        found.append("PodDisruptionBudget: minAvailable must stay below the HPA's minReplicas")
    return found


def kustomization_problems(m: Manifests) -> list[str]:
    found = []
    if set(m.kustomization.get("resources", [])) != m.k8s_files:
        found.append("kustomization.yaml: resources must list every manifest in deploy/kubernetes")
    image = m.deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    if {i["name"] for i in m.kustomization.get("images", [])} != {image.split(":")[0]}:
        found.append("kustomization.yaml: images must name the Deployment's image")
    return found


def kserve_problems(m: Manifests) -> list[str]:
    """The server's contract inside the runtime, and the InferenceService's link to the runtime."""
    runtime, predictor = m.runtime["spec"], m.isvc["spec"]["predictor"]
    (container,) = runtime["containers"]
    deployment_container = m.deployment["spec"]["template"]["spec"]["containers"][0]
    # A ServingRuntime has no grace-period field: the InferenceService's predictor has it.
    found = server_problems("ServingRuntime", runtime, container, "h2c",
                            predictor.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
    if container["name"] != "kserve-container":
        found.append("ServingRuntime: KServe merges the model spec into the container named kserve-container")
    if container.get("ports") != [{"containerPort": 8001, "name": "h2c", "protocol": "TCP"}]:
        found.append("ServingRuntime: needs the one port {containerPort: 8001, name: h2c, protocol: TCP}")
    env = env_of(container)
    if env.get("BNSERVE_REPOSITORY") != "/mnt/models":
        found.append("ServingRuntime: BNSERVE_REPOSITORY must be /mnt/models, where KServe puts the model")
    if runtime.get("annotations", {}).get("prometheus.kserve.io/port") != env.get("BNSERVE_METRICS_PORT"):
        found.append("ServingRuntime: prometheus.kserve.io/port is not BNSERVE_METRICS_PORT")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if container.get(probe) != deployment_container.get(probe):
            found.append(f"ServingRuntime: {probe} differs from the Deployment's")
    protocols = set(runtime.get("protocolVersions", []))
    if "grpc-v2" not in protocols or protocols - {"grpc-v1", "grpc-v2"}:
        found.append("ServingRuntime: protocolVersions must be gRPC ones with grpc-v2 (no REST endpoint)")
    formats = {f["name"]: f for f in runtime.get("supportedModelFormats", [])}
    if not formats.get("onnx", {}).get("autoSelect"):
        found.append("ServingRuntime: must support model format onnx with autoSelect")

    model = predictor["model"]
    if model.get("runtime") != m.runtime["metadata"]["name"]:
        found.append("InferenceService: runtime is not the ServingRuntime's name")
    if model["modelFormat"]["name"] not in formats:
        found.append("InferenceService: its modelFormat is not one the runtime supports")
    if model.get("protocolVersion") not in protocols & KSERVE_PROTOCOLS:
        found.append("InferenceService: protocolVersion must be one the runtime lists")
    if not re.match(r"(pvc|s3|gs|https?|hf|oci)://", model.get("storageUri", "")):
        found.append("InferenceService: storageUri needs a scheme KServe knows")
    if predictor.get("enableServiceLinks") is not False:
        found.append("InferenceService: enableServiceLinks must be false")
    return found


def contract_problems(m: Manifests) -> list[str]:
    return [*deployment_problems(m), *service_problems(m), *scaling_problems(m),
            *kustomization_problems(m), *kserve_problems(m)]


def test_the_manifests_keep_the_servers_contract():
    assert contract_problems(load_manifests()) == []


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    next(e for e in container["env"] if e["name"] == name)["value"] = value


def _dep(m: Manifests) -> dict[str, Any]:
    return m.deployment["spec"]["template"]["spec"]["containers"][0]


def _rt(m: Manifests) -> dict[str, Any]:
    return m.runtime["spec"]["containers"][0]


BREAKAGES: list[tuple[str, Callable[[Manifests], Any], str]] = [
    ("liveness asks readiness", lambda m: _dep(m)["livenessProbe"]["grpc"].update(service=READINESS_SERVICE),
     "livenessProbe asks service"),
    ("readiness asks liveness", lambda m: _dep(m)["readinessProbe"]["grpc"].pop("service"),
     "readinessProbe asks service"),
    ("http probe", lambda m: _dep(m).update(readinessProbe={"tcpSocket": {"port": 8001}}),
     "readinessProbe must be a grpc probe"),
    ("probe port", lambda m: _dep(m)["startupProbe"]["grpc"].update(port=8002), "startupProbe probes port"),
    ("env port", lambda m: _set_env(_dep(m), "BNSERVE_PORT", "9000"), "BNSERVE_PORT 9000"),
    ("loopback", lambda m: _set_env(_dep(m), "BNSERVE_HOST", "127.0.0.1"), "BNSERVE_HOST must be"),
    ("metrics port", lambda m: _set_env(_dep(m), "BNSERVE_METRICS_PORT", "9090"), "BNSERVE_METRICS_PORT"),
    ("flags", lambda m: _dep(m).update(args=["serve", "--port", "8001"]), "args must be"),
    ("short startup", lambda m: _dep(m)["startupProbe"].update(failureThreshold=3), "startup probe"),
    ("short grace", lambda m: m.deployment["spec"]["template"]["spec"].update(
        terminationGracePeriodSeconds=15), "terminationGracePeriodSeconds 15"),
    ("long drain", lambda m: _set_env(_dep(m), "BNSERVE_SHUTDOWN_GRACE_S", "30"),
     "terminationGracePeriodSeconds"),
    ("no preStop", lambda m: _dep(m).pop("lifecycle"), "preStop"),
    ("eager liveness", lambda m: _dep(m)["livenessProbe"].update(failureThreshold=1), "could kill"),
    ("threads", lambda m: _set_env(_dep(m), "BNSERVE_INTRA_OP_THREADS", "4"), "BNSERVE_INTRA_OP_THREADS"),
    ("burstable cpu", lambda m: _dep(m)["resources"]["limits"].update(cpu="4"), "CPU request must equal"),
    ("burstable memory", lambda m: _dep(m)["resources"].update(requests={"cpu": "2000m", "memory": "1Gi"}),
     "memory request must equal"),
    ("root", lambda m: _dep(m)["securityContext"].update(runAsUser=0), "runAsUser must be"),
    ("writable root", lambda m: _dep(m)["securityContext"].update(readOnlyRootFilesystem=False),
     "readOnlyRootFilesystem"),
    ("capabilities", lambda m: _dep(m)["securityContext"].update(capabilities={}), "capabilities.drop"),
    ("no home", lambda m: _dep(m)["volumeMounts"].pop(2), "/home/bnserve must be"),
    ("writable models", lambda m: _dep(m)["volumeMounts"][0].pop("readOnly"), "BNSERVE_REPOSITORY must be"),
    ("repository elsewhere", lambda m: _set_env(_dep(m), "BNSERVE_REPOSITORY", "/srv"), "BNSERVE_REPOSITORY"),
    ("service links", lambda m: m.deployment["spec"]["template"]["spec"].pop("enableServiceLinks"),
     "enableServiceLinks"),
    ("headless selector", lambda m: m.headless["spec"].update(selector={"app": "other"}),
     "bnserve-headless: does not select"),
    ("headless port", lambda m: m.headless["spec"]["ports"][0].update(port=80), "its port must be"),
    ("no h2c", lambda m: m.service["spec"]["ports"][0].pop("appProtocol"),
     "Service bnserve: needs port grpc"),
    ("hpa target", lambda m: m.hpa["spec"]["scaleTargetRef"].update(name="other"), "does not target"),
    ("hpa memory", lambda m: m.hpa["spec"]["metrics"][0]["resource"].update(name="memory"),
     "cpu Utilization"),
    ("hpa single", lambda m: m.hpa["spec"].update(minReplicas=1), "minReplicas must be"),
    ("hpa jumpy", lambda m: m.hpa["spec"]["behavior"].pop("scaleDown"), "stabilization window"),
    ("pdb selector", lambda m: m.pdb["spec"]["selector"].update(matchLabels={}),
     "PodDisruptionBudget: does not"),
    ("pdb blocks", lambda m: m.pdb["spec"].update(minAvailable=2), "minAvailable must stay"),
    ("kustomization", lambda m: m.kustomization["resources"].remove("pdb.yaml"), "resources must list"),
    ("runtime probe", lambda m: _rt(m)["readinessProbe"].update(periodSeconds=30), "readinessProbe differs"),
    ("runtime port", lambda m: _rt(m)["ports"][0].update(name="grpc"), "no container port named h2c"),
    ("runtime repository", lambda m: _set_env(_rt(m), "BNSERVE_REPOSITORY", "/models"), "/mnt/models"),
    ("runtime container", lambda m: _rt(m).update(name="bnserve"), "kserve-container"),
    ("runtime rest", lambda m: m.runtime["spec"].update(protocolVersions=["v2", "grpc-v2"]), "no REST"),
    ("runtime formats", lambda m: m.runtime["spec"]["supportedModelFormats"][0].update(autoSelect=False),
     "onnx with autoSelect"),
    ("isvc runtime", lambda m: m.isvc["spec"]["predictor"]["model"].update(runtime="triton"),
     "runtime is not"),
    ("isvc protocol", lambda m: m.isvc["spec"]["predictor"]["model"].update(protocolVersion="v2"),
     "protocolVersion must be"),
    ("isvc grace", lambda m: m.isvc["spec"]["predictor"].update(terminationGracePeriodSeconds=10),
     "ServingRuntime: terminationGracePeriodSeconds 10"),
    ("isvc uri", lambda m: m.isvc["spec"]["predictor"]["model"].update(storageUri="/models"), "storageUri"),
]


@pytest.mark.parametrize(("change", "expected"), [(b[1], b[2]) for b in BREAKAGES],
                         ids=[b[0] for b in BREAKAGES])
def test_each_contract_rule_refuses_a_broken_copy(change, expected):
    manifests = load_manifests()
    change(manifests)
    found = contract_problems(manifests)
    assert any(expected in problem for problem in found), found


# --- BNSERVE_* names and values -----------------------------------------------------------


def unknown_settings(text: str) -> set[str]:
    names = {n.lower() for n in re.findall(r"\bBNSERVE_([A-Z][A-Z0-9_]*)", text)}
    return names - set(ServerSettings.model_fields)


def test_every_bnserve_name_in_deploy_is_a_server_setting():
    texts = {p.relative_to(ROOT): p.read_text() for p in sorted(DEPLOY.rglob("*")) if p.is_file()}
    assert {str(p): unknown_settings(t) for p, t in texts.items() if unknown_settings(t)} == {}
    assert unknown_settings("  - name: BNSERVE_INTRA_OPS_THREADS") == {"intra_ops_threads"}


@pytest.mark.parametrize("container", [
    _container(_deployment()), _kserve("ServingRuntime")["spec"]["containers"][0],
], ids=["Deployment", "ServingRuntime"])
def test_the_env_values_are_valid_settings(container, monkeypatch):
    for name in [n for n in os.environ if n.startswith("BNSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    settings = ServerSettings()
    assert settings.port == int(env_of(container)["BNSERVE_PORT"])
    monkeypatch.setenv("BNSERVE_SHUTDOWN_GRACE_S", "ten")
    with pytest.raises(pydantic.ValidationError):
        ServerSettings()


def test_the_readme_calls_what_the_manifests_define():
    readme = (DEPLOY / "README.md").read_text()
    m = load_manifests()
    name, port = m.headless["metadata"]["name"], m.headless["spec"]["ports"][0]["port"]
    assert f'Client("dns:///{name}.NAMESPACE.svc.cluster.local:{port}")' in readme
    assert f'url="dns:///{name}.NAMESPACE.svc.cluster.local:{port}"' in readme  # tritonclient
    # KServe's Standard mode: Service <name>-predictor, port 80 to the container's port.
    assert f"{m.isvc['metadata']['name']}-predictor.NAMESPACE.svc.cluster.local:80" in readme
    for path in [*KUBERNETES_DIR.glob("*.yaml"), *KSERVE_DIR.glob("*.yaml")]:
        assert str(path.relative_to(ROOT)) in readme or path.name in readme, path
