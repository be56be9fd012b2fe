"""deploy/kubernetes/: every manifest validates against the Kubernetes API schemas (kubernetes-validate,
from PyPI, schemas bundled: nothing is fetched), the InferencePool against its CRD, and the pieces fit
together: configs vlgate accepts, DNS name and ports that match, grace periods that cover the drain,
and an endpoint-picker config that names gauges vlgate really exports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as k8s

from vlgate.config import Config, parse_config
from vlgate.gateway.fleet.capacity import ModelServerGauges, NodeLoad

DEPLOY = Path(__file__).parents[1] / "deploy" / "kubernetes"
CRD = Path(__file__).parent / "data" / "inferencepool-crd-v1.5.0.yaml"
VERSIONS = ["1.30.0", k8s.latest_version()]  # grpc probes and sidecar-free specs: 1.30 is the oldest we claim
MARGIN_S = 5


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [(str(path.relative_to(DEPLOY)), doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any connection off this machine fails the test: validation must use the bundled schemas."""
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not host.startswith(("127.", "::1", "/")):
            raise AssertionError(f"network access during validation: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates(offline: None, version: str) -> None:
    docs = manifests()
    assert len(docs) >= 15
    crd = yaml.safe_load(CRD.read_text())
    pool_schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    for where, doc in docs:
        if doc["apiVersion"] == "inference.networking.k8s.io/v1":
            jsonschema.validate(doc, pool_schema)
            continue
        try:
            k8s.validate(doc, version, strict=True)
        except (k8s.ValidationError, k8s.SchemaNotFoundError, k8s.InvalidSchemaError) as exc:
            raise AssertionError(f"{where} ({doc['kind']}) against Kubernetes {version}: {exc}") from None


def test_the_validator_catches_a_typo(offline: None) -> None:
    doc = find("Deployment", "vlgate-serve")
    doc["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(k8s.ValidationError, match="terminationGracePeriodSecond"):
        k8s.validate(doc, k8s.latest_version(), strict=True)
    pool = find("InferencePool", "vlgate-nodes")
    del pool["spec"]["targetPorts"]
    crd = yaml.safe_load(CRD.read_text())
    with pytest.raises(jsonschema.ValidationError, match="targetPorts"):
        jsonschema.validate(pool, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_kustomizations_list_exactly_the_files() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text())["resources"])
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, kustomization


def vlgate_config(configmap: str) -> Config:
    return parse_config(yaml.safe_load(find("ConfigMap", configmap)["data"]["config.yaml"]), configmap)


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    return find(kind, name)["spec"]["template"]["spec"]


def container(kind: str, name: str) -> dict[str, Any]:
    return pod_spec(kind, name)["containers"][0]


@pytest.mark.parametrize(("kind", "name", "configmap", "command"), [
    ("DaemonSet", "vlgate-node", "vlgate-node-config", "up"),
    ("Deployment", "vlgate-serve", "vlgate-serve-config", "serve"),
])
def test_probes_and_grace_match_the_drain(kind: str, name: str, configmap: str, command: str) -> None:
    config = vlgate_config(configmap)
    g = config.gateway
    c = container(kind, name)
    assert c["args"] == [command, "--config", "/etc/vlgate/config.yaml"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/etc/vlgate"}
    assert c["ports"][0]["containerPort"] == g.port and g.host == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["livenessProbe"]["httpGet"]["path"] == "/health"
    # the readiness probe sees the 503 well within the drain delay, while the listener is still open
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready.get("failureThreshold", 3) < g.drain_delay_s
    stop = config.launcher.stop_timeout_s if command == "up" else 0
    assert pod_spec(kind, name)["terminationGracePeriodSeconds"] >= g.drain_delay_s + g.drain_grace_s + stop + MARGIN_S
    assert "preStop" not in c.get("lifecycle", {})  # the delay is vlgate's own: a preStop sleep would add to it


def test_nodes_get_gpus_a_model_cache_and_the_hf_token() -> None:
    c = container("DaemonSet", "vlgate-node")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == find("Secret", "vlgate-hf-token")["metadata"]["name"]
    cache = next(m for m in c["volumeMounts"] if m["name"] == "cache")["mountPath"]
    assert env["HF_HOME"]["value"].startswith(cache)
    assert str(vlgate_config("vlgate-node-config").launcher.model.cache_dir).startswith(cache)
    assert "startupProbe" in c  # the download happens before the gateway listens


def test_serve_replicas_discover_the_nodes_through_the_headless_service() -> None:
    nodes = find("Service", "vlgate-nodes")
    assert nodes["spec"]["clusterIP"] == "None"
    (entry,) = vlgate_config("vlgate-serve-config").backends
    assert entry.dns == nodes["metadata"]["name"] and entry.port == nodes["spec"]["ports"][0]["port"]
    node_labels = find("DaemonSet", "vlgate-node")["spec"]["template"]["metadata"]["labels"]
    serve_labels = find("Deployment", "vlgate-serve")["spec"]["template"]["metadata"]["labels"]
    assert nodes["spec"]["selector"].items() <= node_labels.items()
    assert find("Service", "vlgate")["spec"]["selector"].items() <= serve_labels.items()
    budget = find("PodDisruptionBudget", "vlgate-serve")
    assert budget["spec"]["selector"]["matchLabels"].items() <= serve_labels.items()
    assert find("Deployment", "vlgate-serve")["spec"]["replicas"] >= 2


def test_the_endpoint_picker_reads_gauges_vlgate_exports() -> None:
    epp = yaml.safe_load(find("ConfigMap", "vlgate-epp-config")["data"]["epp.yaml"])
    extractor = next(p for p in epp["plugins"] if p["type"] == "core-metrics-extractor")["parameters"]
    (engine,) = extractor["engineConfigs"]
    labels = find("DaemonSet", "vlgate-node")["spec"]["template"]["metadata"]["labels"]
    assert labels[extractor["engineLabelKey"]] == engine["name"] == extractor["defaultEngine"]
    exported = {m.name for m in ModelServerGauges(lambda: NodeLoad(4, 1, 0)).collect()}
    for spec in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"):
        assert engine[spec] in exported
    pool = find("InferencePool", "vlgate-nodes")
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"][0]["number"] == vlgate_config("vlgate-node-config").gateway.port
    assert pool["spec"]["endpointPickerRef"]["name"] == find("Service", "vlgate-epp")["metadata"]["name"]
    names = {p.get("name", p["type"]) for p in epp["plugins"]}
    assert {r["pluginRef"] for prof in epp["schedulingProfiles"] for r in prof["plugins"]} <= names
