"""The example Kubernetes manifests: schema-valid offline, consistent with each other and KPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e .[test])"
)

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
# Pinned so a kubernetes-validate upgrade cannot change the verdict silently.
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]
    assert found, f"no manifests found in {MANIFESTS}"
    return found


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for _, doc in documents() if (doc["kind"], doc["metadata"]["name"]) == (kind, name)
    ]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def kpc_container() -> dict[str, Any]:
    containers = find("Deployment", "kpc")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "kpc")


@pytest.mark.parametrize(("label", "doc"), documents(), ids=[label for label, _ in documents()])
def test_manifest_is_valid_against_kubernetes_schema(label: str, doc: dict[str, Any]) -> None:
    # strict: unknown fields (typos such as `readinesProbe`) are errors, not silently ignored.
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_manifest_file_is_the_expected_set() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    assert kinds == {
        ("ConfigMap", "kpc-config"),
        ("Deployment", "kpc"),
        ("Service", "kpc"),
        ("Deployment", "nats"),
        ("Service", "nats"),
    }


def test_services_select_their_deployments_pods() -> None:
    for name in ("kpc", "nats"):
        pod_labels = find("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        selector = find("Service", name)["spec"]["selector"]
        assert selector.items() <= pod_labels.items(), f"Service {name} selects no {name} pod"


def test_ports_are_named_as_in_kaas_kpc_descriptor() -> None:
    # Kaa's KPC Deployment page lists 1883 mqtt, 8883 mqtt-tls and 8080 metrics.
    container_ports = {p["containerPort"]: p["name"] for p in kpc_container()["ports"]}
    service_ports = {p["port"]: p["name"] for p in find("Service", "kpc")["spec"]["ports"]}
    for ports in (container_ports, service_ports):
        assert ports[1883] == "mqtt"
        assert ports[8883] == "mqtt-tls"
    assert container_ports[8080] == "metrics"


def test_service_target_ports_exist_on_the_container() -> None:
    container_ports = {p["name"] for p in kpc_container()["ports"]}
    service_ports = find("Service", "kpc")["spec"]["ports"]

    assert {p["targetPort"] for p in service_ports} <= container_ports
    assert {(p["port"], p.get("nodePort")) for p in service_ports} >= {(1883, 30720), (8883, 30721)}


def test_deployment_mounts_config_and_license_where_the_image_expects_them() -> None:
    container = kpc_container()
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    pod = find("Deployment", "kpc")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}

    config_dir, config_file = env["APP_CONFIG_PATH"]["value"].rsplit("/", 1)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == "kpc-config"
    assert config_file in find("ConfigMap", "kpc-config")["data"]

    license_dir, license_file = env["KAA_LICENSE_CERT_PATH"]["value"].rsplit("/", 1)
    license_items = volumes[mounts[license_dir]]["secret"]["items"]
    assert license_file in {item["path"] for item in license_items}
    assert env["KAA_LICENSE_CERT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "license"


def test_deployment_runs_non_root_within_the_memory_budget() -> None:
    pod = find("Deployment", "kpc")["spec"]["template"]["spec"]
    resources = kpc_container()["resources"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert resources["requests"]["memory"] == "25Mi"
    assert resources["limits"]["memory"] == "100Mi"


def test_configmap_service_config_loads_and_matches_the_deployment(tmp_path: Path) -> None:
    config_module = pytest.importorskip(
        "kpc_trio.config", reason="kpc_trio/config.py (load_config) does not exist yet"
    )
    path = tmp_path / "service-config.yml"
    path.write_text(find("ConfigMap", "kpc-config")["data"]["service-config.yml"])

    config = config_module.load_config(str(path), env={"NATS_URLS": "nats://nats:4222"})

    pod = find("Deployment", "kpc")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in kpc_container()["ports"]}
    assert pod["terminationGracePeriodSeconds"] > config.service.graceful_shutdown
    assert ports["metrics"] == config.management.port
    assert ports["http"] == config.server.port
    assert ports["mqtt"] == config.kaa.kpc.transports.mqtt.tcp.port
    assert ports["mqtt-tls"] == config.kaa.kpc.transports.mqtt.tls.port
    assert "demo_application" in config.kaa.applications
