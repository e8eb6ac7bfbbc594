"""What `kubectl kustomize` would render, for the few features deploy/k8s uses, so that the
overlay's output can be validated offline (no kubectl here). A kustomization using anything
else is refused, so the test cannot silently skip a feature it does not apply."""

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]
_SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}


def load_documents(path: Path) -> list[Manifest]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def render(folder: Path) -> list[Manifest]:
    """The manifests of the kustomization in `folder`, with its transformations applied."""
    kustomization: Manifest = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - _SUPPORTED
    if unsupported:
        raise ValueError(f"{folder}: kustomize features not rendered here: {sorted(unsupported)}")
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        manifests += render(target) if target.is_dir() else load_documents(target)
    for labels in kustomization.get("labels", []):
        for manifest in manifests:
            manifest["metadata"].setdefault("labels", {}).update(labels["pairs"])
    if "namespace" in kustomization:
        for manifest in manifests:
            manifest["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in _containers(manifests):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for patch in kustomization.get("patches", []):
        _apply_patch(manifests, patch)
    return manifests


def _containers(manifests: list[Manifest]) -> list[Manifest]:
    return [
        container
        for manifest in manifests
        if manifest["kind"] == "Deployment"
        for container in manifest["spec"]["template"]["spec"]["containers"]
    ]


def _apply_patch(manifests: list[Manifest], patch: Manifest) -> None:
    """A JSON 6902 patch (`replace` and `add` on existing parents) on the one target."""
    target = patch["target"]
    matches = [
        m
        for m in manifests
        if m["kind"] == target["kind"] and m["metadata"]["name"] == target["name"]
    ]
    if len(matches) != 1:
        raise ValueError(f"patch target {target} matches {len(matches)} manifests")
    for operation in yaml.safe_load(patch["patch"]):
        if operation["op"] not in {"replace", "add"}:
            raise ValueError(f"patch operation not rendered here: {operation['op']}")
        *parents, last = operation["path"].strip("/").split("/")
        node = matches[0]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if operation["op"] == "replace" and last not in node:
            raise ValueError(f"nothing to replace at {operation['path']}")
        node[last] = copy.deepcopy(operation["value"])
