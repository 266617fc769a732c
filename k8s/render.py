"""Render the Helm chart with its default values into k8s/manifests/ (plain manifests).

    python k8s/render.py          # or: make manifests

A test renders again and compares, so the committed manifests never drift from the chart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python as helm

CHART = Path(__file__).resolve().parent / "helm" / "credential-broker"
OUTPUT = Path(__file__).resolve().parent / "manifests" / "credential-broker.yaml"
HEADER = (
    "# Generated from k8s/helm/credential-broker with its default values (python k8s/render.py).\n"
    "# Release credential-broker in namespace credential-broker. Edit the chart, not this.\n"
)


def render() -> str:
    """The default rendering, as one multi-document YAML file."""
    manifests = helm.Chart.load(str(CHART)).render(
        None, name="credential-broker", namespace="credential-broker"
    )
    documents = [
        text.strip()
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml") and text.strip()
    ]
    return HEADER + "".join(f"---\n{document}\n" for document in documents)


def main() -> int:
    """Write the plain manifests."""
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
