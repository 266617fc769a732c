"""Offline checks of the Kubernetes deployment: the Helm chart, manifests, examples, SPIRE."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from broker.config.settings import load_settings
from broker.issuers.jwt.config import JwtIssuerSettings
from broker.policy.loader import load_policy
from broker.spiffe_id import parse_spiffe_id
from tests.deploy.chart import CHART, KUBE_VERSION, ROOT, is_custom_resource, of_kind, render

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "single-sqlite-file-audit": {
        "replicaCount": 1,
        "state": {"backend": "sqlite"},
        "audit": {"sink": "file", "existingClaim": "audit"},
    },
    "vault-and-idp": {
        "vault": {
            "enabled": True,
            "caConfigMap": "vault-ca",
            "auth": {"method": "cert", "mount": "cert", "role": "credential-broker"},
        },
        "userTokenIssuers": [
            {
                "issuer": "https://login.example.org",
                "audience": "credential-broker",
                "jwksUrl": "https://login.example.org/jwks.json",
            }
        ],
        "state": {"redis": {"url": "rediss://redis:6380/0", "passwordSecret": "redis-auth"}},
        "tools": {
            "customer_data_api": {
                "type": "jwt",
                "audience": "https://crm.example.org",
                "scope": "crm:read",
            },
            "ticketing_db": {
                "type": "vault",
                "vault": {"kind": "dynamic", "path": "database/creds/ticketing"},
            },
        },
        "policy": yaml.safe_dump(
            {
                "id": "prod",
                "version": 4,
                "rules": [
                    {
                        "id": "claims",
                        "agents": ["spiffe://example.org/ns/agents/*"],
                        "tools": ["customer_data_api", "ticketing_db"],
                        "user": {"required": True},
                        "rate_limits": [{"per": ["user"], "limit": 60, "window_seconds": 60}],
                    },
                ],
            }
        ),
        "admins": ["spiffe://example.org/ns/credential-broker-admin/sa/broker-admin"],
    },
    "hostpath-socket": {
        "spiffe": {"csiDriver": "", "hostPathSocketDir": "/run/spire/agent-sockets"}
    },
    "every-option": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "registry"}],
        "workers": 3,
        "podAnnotations": {"example.org/team": "identity"},
        "podLabels": {"example.org/tier": "security"},
        "priorityClassName": "system-cluster-critical",
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "credential-broker"}},
            }
        ],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraVolumes": [{"name": "shipper-config", "configMap": {"name": "shipper"}}],
        "extraVolumeMounts": [{"name": "shipper-config", "mountPath": "/etc/shipper"}],
        "extraContainers": [
            {
                "name": "log-shipper",
                "image": "registry.example.org/shipper:1.0",
                "args": ["--watch", "/var/lib/credential-broker/audit"],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/credential-broker/audit"},
                    {"name": "shipper-config", "mountPath": "/etc/shipper"},
                ],
            }
        ],
        "termination": {"preStopSleepSeconds": 3},
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "spire": {"clusterSPIFFEIDs": {"enabled": True}},
        "replicaCount": 1,
        "state": {"backend": "sqlite"},
        "audit": {"sink": "file", "existingClaim": "audit"},
    },
    "no-metrics-port": {"metrics": {"enabled": False}},
}


def test_chart_lints_strictly() -> None:
    """Strict `helm lint`: no errors and no warnings."""
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_validate_against_kubernetes_schemas(variant: str) -> None:
    """Every rendered object is valid Kubernetes 1.30, unknown fields refused."""
    documents = render(VARIANTS[variant])
    assert {d["kind"] for d in documents} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
    }
    for document in documents:
        if not is_custom_resource(document):  # checked structurally in test_operations.py
            kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_config_and_policy_load_in_the_broker(variant: str, tmp_path: Path) -> None:
    """The chart's config.yaml and policy.yaml pass the broker's own loaders."""
    documents = render(VARIANTS[variant])
    config_map = next(d for d in of_kind(documents, "ConfigMap") if "config.yaml" in d["data"])
    policy_map = next(d for d in of_kind(documents, "ConfigMap") if "policy.yaml" in d["data"])
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    settings = load_settings(path)
    assert settings.spiffe_id == "spiffe://example.org/ns/brokers/sa/credential-broker"
    assert settings.identity.source == "workload_api"
    jwt_issuer = settings.issuers["jwt"]
    assert isinstance(jwt_issuer, JwtIssuerSettings)
    assert jwt_issuer.auto_rotate is False  # replicas share keys from a Secret
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_map["data"]["policy.yaml"])
    load_policy(policy, known_tools=frozenset(t.name for t in settings.tools))


def test_deployment_is_hardened() -> None:
    """Non-root, read-only root, no capabilities, no privilege escalation, seccomp, probes."""
    [deployment] = of_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # A shared Redis outage must not take every replica out of the Service (README, Operations).
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz/public"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spiffe-workload-api"]["csi"]["driver"] == "csi.spiffe.io"
    assert volumes["issuer-keys"]["secret"]["defaultMode"] == 0o400
    assert deployment["spec"]["replicas"] == 2
    assert of_kind(render(), "PodDisruptionBudget")


def test_several_replicas_need_redis() -> None:
    """Two replicas on the embedded store would not share revocations: refused at render."""
    with pytest.raises(helm.HelmRenderError, match=r"needs state\.backend=redis"):
        render({"replicaCount": 2, "state": {"backend": "sqlite"}})


def test_values_typos_are_refused_by_the_schema() -> None:
    """values.schema.json rejects unknown keys and bad values."""
    with pytest.raises(helm.HelmValuesError, match="trustDomian"):
        render({"trustDomian": "example.org"})
    with pytest.raises(helm.HelmValuesError):
        render({"issuer": {"url": "http://insecure", "keysSecret": "k"}})


def test_plain_manifests_match_the_chart() -> None:
    """k8s/manifests/ is exactly the chart's default rendering (python k8s/render.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", ROOT / "k8s" / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "k8s" / "manifests" / "credential-broker.yaml").read_text()
    assert committed == module.render(), "run `python k8s/render.py` after changing the chart"
    for document in yaml.safe_load_all(committed):
        if document:
            kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


def test_agent_pod_example() -> None:
    """The agent example validates and wires broker-hook as a sidecar before the agent."""
    documents = [
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "examples" / "agent-pod.yaml").read_text())
        if d
    ]
    for document in documents:
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)
    [deployment] = of_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [hook] = pod["initContainers"]
    assert hook["restartPolicy"] == "Always"
    assert hook["command"] == ["broker-hook"]
    env = {e["name"]: e.get("value") for e in hook["env"]}
    assert env["BROKER_HOOK_MODE"] == "sidecar"
    assert env["SPIFFE_ENDPOINT_SOCKET"].startswith("unix://")
    parse_spiffe_id(env["BROKER_SPIFFE_ID"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["credentials"]["emptyDir"]["medium"] == "Memory"
    assert (
        deployment["spec"]["template"]["metadata"]["labels"]["credential-broker.spiffe.io/client"]
        == "true"
    )


def test_vault_setup_job() -> None:
    """The Vault setup Job validates and runs the same script the tests run."""
    [job] = [d for d in yaml.safe_load_all((ROOT / "k8s" / "vault" / "job.yaml").read_text()) if d]
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "sh",
        "/scripts/setup.sh",
    ]
    kustomization = yaml.safe_load((ROOT / "k8s" / "vault" / "kustomization.yaml").read_text())
    assert kustomization["configMapGenerator"][0]["files"] == ["setup.sh"]
    assert (
        subprocess.run(
            ["sh", "-n", str(ROOT / "k8s" / "vault" / "setup.sh")], check=False
        ).returncode
        == 0
    )


def test_spire_registration_entries() -> None:
    """Entries cover broker, agents and admins; the broker's gives it a DNS name (a CN)."""
    entries = [
        d for d in yaml.safe_load_all((ROOT / "spire-config" / "entries.yaml").read_text()) if d
    ]
    by_name = {e["metadata"]["name"]: e for e in entries}
    assert set(by_name) == {
        "credential-broker",
        "credential-broker-agents",
        "credential-broker-admins",
    }
    broker = by_name["credential-broker"]["spec"]
    assert broker["dnsNameTemplates"]
    assert broker["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "credential-broker"}
    agents = by_name["credential-broker-agents"]["spec"]["podSelector"]["matchLabels"]
    assert agents == {"credential-broker.spiffe.io/client": "true"}
    assert all(e["spec"]["className"] for e in entries)
    registered = json.loads((ROOT / "spire-config" / "entries.json").read_text())["entries"]
    for entry in registered:
        parse_spiffe_id(entry["spiffe_id"])
        parse_spiffe_id(entry["parent_id"])
        assert entry["selectors"]
    [broker_entry] = [e for e in registered if e["spiffe_id"].endswith("/sa/credential-broker")]
    assert broker_entry["dns_names"] == ["credential-broker.credential-broker.svc"]
    assert (
        subprocess.run(
            ["sh", "-n", str(ROOT / "spire-config" / "register.sh")], check=False
        ).returncode
        == 0
    )


def test_spire_configs_agree_on_the_trust_domain() -> None:
    """Server and agent are configured for the same trust domain, with short SVIDs."""
    server = (ROOT / "spire-config" / "server.conf").read_text()
    agent = (ROOT / "spire-config" / "agent.conf").read_text()
    domain = re.compile(r'trust_domain\s*=\s*"([^"]+)"')
    assert domain.findall(server) == domain.findall(agent) == ["example.org"]
    assert 'default_x509_svid_ttl = "1h"' in server
    assert 'WorkloadAttestor "k8s"' in agent
