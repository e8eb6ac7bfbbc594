"""The deployment files, checked offline: the Kubernetes manifests (plain and the overlay's
rendering) against the API schemas kubernetes-validate bundles, in strict mode (unknown fields
and removed apiVersions fail), and docker-compose.yml against the compose specification."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from app.core.config import Settings
from app.main import create_app
from app.services.health import CHECK_TIMEOUT_SECONDS
from tests.support.kustomize import Manifest, load_documents, render

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE_FILES = sorted(
    path for path in (K8S / "base").glob("*.yaml") if path.name != "kustomization.yaml"
)
KUBERNETES = latest_version()  # the newest API the package knows


def validate(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def by_kind(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {manifest["kind"]: manifest for manifest in manifests}


@pytest.mark.parametrize("path", BASE_FILES, ids=lambda path: path.name)
def test_every_plain_manifest_is_valid_for_the_current_kubernetes_api(path: Path) -> None:
    for manifest in load_documents(path):
        validate(manifest)


def test_a_removed_api_version_fails_validation() -> None:
    pdb = by_kind(load_documents(K8S / "base" / "pdb.yaml"))["PodDisruptionBudget"]
    with pytest.raises(SchemaNotFoundError):
        validate({**pdb, "apiVersion": "policy/v1beta1"})  # removed in Kubernetes 1.25


def test_the_base_lists_every_manifest_but_the_secret_example() -> None:
    listed = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in BASE_FILES if p.name != "secret.example.yaml")


def test_the_production_overlay_renders_valid_manifests_with_its_changes() -> None:
    rendered = render(K8S / "overlays" / "production")
    for manifest in rendered:
        validate(manifest)
    kinds = by_kind(rendered)
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]

    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    assert {m["metadata"]["namespace"] for m in rendered} == {"image-similarity"}
    assert container["image"] == "registry.example.com/image-processing-service:0.1.0"
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    assert kinds["ConfigMap"]["data"]["S3_REGION"] == "eu-central-1"


def test_the_deployment_runs_stateless_non_root_replicas_probed_on_the_health_routes() -> None:
    manifests = [m for path in BASE_FILES for m in load_documents(path)]
    kinds = by_kind(manifests)
    deployment, config = kinds["Deployment"], kinds["ConfigMap"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    routes = set(create_app(Settings()).openapi()["paths"])
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert deployment["spec"]["replicas"] >= 2
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (mount,) = container["volumeMounts"]
    assert config["data"]["DATA_DIR"].startswith(mount["mountPath"] + "/")  # writable
    assert any(v["name"] == mount["name"] and "emptyDir" in v for v in pod["volumes"])
    assert set(container["resources"]) == {"requests", "limits"}
    probes = {name: container[name]["httpGet"]["path"] for name in _PROBES}
    assert probes == {
        "startupProbe": "/api/v1/health/live",
        "livenessProbe": "/api/v1/health/live",
        "readinessProbe": "/api/v1/health/ready",
    }
    assert set(probes.values()) <= routes
    # Probes time out after the service's own dependency checks would.
    assert all(container[name]["timeoutSeconds"] > CHECK_TIMEOUT_SECONDS for name in _PROBES[1:])
    assert container["ports"][0]["containerPort"] == int(config["data"]["PORT"])
    for kind in ("Service", "PodDisruptionBudget"):
        selector = kinds[kind]["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= pod_labels.items()
    assert (
        kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == (deployment["metadata"]["name"])
    )


_PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_the_config_map_and_secret_hold_only_settings_the_service_knows() -> None:
    manifests = [m for path in BASE_FILES for m in load_documents(path)]
    kinds = by_kind(manifests)
    references = [
        source
        for source in kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    ]
    config = kinds["ConfigMap"]["data"]
    secret = kinds["Secret"]["stringData"]

    assert set(config) | set(secret) <= set(Settings.model_fields)
    assert {"DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret)
    assert references == [
        {"configMapRef": {"name": kinds["ConfigMap"]["metadata"]["name"]}},
        {"secretRef": {"name": kinds["Secret"]["metadata"]["name"]}},
    ]
    Settings.model_validate({**config, **secret})  # the values parse


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_docker_compose_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_runs_the_api_on_its_s3_store() -> None:
    services = compose()["services"]
    api, store = services["api"], services["s3"]
    environment = api["environment"]
    s3_port = next(
        argument.split("=")[1] for argument in store["command"] if argument.startswith("-s3.port=")
    )

    assert environment["STORAGE_BACKEND"] == "s3"
    assert environment["S3_ENDPOINT_URL"] == f"http://s3:{s3_port}"
    assert environment["S3_BUCKET"] == store["environment"]["S3_BUCKET"]
    assert api["depends_on"]["s3"] == {"condition": "service_healthy"}
    assert "-master.telemetry=false" in store["command"]
    assert set(environment) <= set(Settings.model_fields)
