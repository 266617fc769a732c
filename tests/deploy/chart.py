"""Rendering the Helm chart offline, and picking objects out of the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "helm" / "credential-broker"
KUBE_VERSION = "1.30"
# Custom resources the bundled Kubernetes schemas do not know: checked structurally instead.
CRD_GROUPS = ("monitoring.coreos.com/", "spire.spiffe.io/")


def render(
    values: dict[str, Any] | None = None, namespace: str = "brokers"
) -> list[dict[str, Any]]:
    """The chart's objects for release `credential-broker` in `namespace`."""
    manifests = helm.Chart.load(str(CHART)).render(
        values, name="credential-broker", namespace=namespace
    )
    documents = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            documents.extend(d for d in yaml.safe_load_all(text) if d)
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def is_custom_resource(document: dict[str, Any]) -> bool:
    return str(document["apiVersion"]).startswith(CRD_GROUPS)


def deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = of_kind(documents, "Deployment")
    return found


def broker_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    containers = deployment(documents)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "broker")


def config(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The broker's config.yaml from the ConfigMap."""
    config_map = next(d for d in of_kind(documents, "ConfigMap") if "config.yaml" in d["data"])
    loaded: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return loaded
