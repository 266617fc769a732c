"""Operations in the chart and manifests.

Termination, metrics, workers, pod options, SPIRE registration, the kustomization,
register.sh, and SPIFFE IDs that agree everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.spiffe_id import SpiffeId
from tests.deploy.chart import (
    CHART,
    ROOT,
    broker_container,
    config,
    deployment,
    of_kind,
    render,
)

MANIFESTS = ROOT / "k8s" / "manifests"
SPIRE = ROOT / "spire-config"
DEFAULT_BROKER_ID = "spiffe://example.org/ns/credential-broker/sa/credential-broker"


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# -- termination ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("termination", "grace"),
    [
        ({}, 5 + 20 + 10),
        ({"drainDelaySeconds": 15, "shutdownTimeoutSeconds": 45}, 15 + 45 + 10),
        ({"preStopSleepSeconds": 4, "extraGraceSeconds": 2}, 4 + 5 + 20 + 2),
    ],
)
def test_grace_period_covers_the_brokers_own_drain(termination: dict[str, int], grace: int) -> None:
    """The grace period = preStop sleep + drain delay + shutdown timeout + margin."""
    documents = render({"termination": termination})
    pod = deployment(documents)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace
    listen = config(documents)["listen"]
    assert listen["drain_delay_seconds"] == termination.get("drainDelaySeconds", 5)
    assert listen["shutdown_timeout_seconds"] == termination.get("shutdownTimeoutSeconds", 20)


def test_pre_stop_uses_the_sleep_action_never_a_shell() -> None:
    """No preStop by default (the broker drains itself); when asked, the shell-free sleep action."""
    assert "lifecycle" not in broker_container(render())
    lifecycle = broker_container(render({"termination": {"preStopSleepSeconds": 3}}))["lifecycle"]
    assert lifecycle == {"preStop": {"sleep": {"seconds": 3}}}


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_port_is_configured_exposed_and_fenced() -> None:
    """Config, container, Service, NetworkPolicy (monitoring only) and annotations agree."""
    documents = render({"metrics": {"port": 9102}})
    assert config(documents)["metrics"] == {"host": "0.0.0.0", "port": 9102}  # noqa: S104
    ports = {p["name"]: p["containerPort"] for p in broker_container(documents)["ports"]}
    assert ports == {"https": 8443, "metrics": 9102}
    [service] = of_kind(documents, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["metrics"] == 9102
    [policy] = of_kind(documents, "NetworkPolicy")
    [metrics_rule] = [
        r
        for r in policy["spec"]["ingress"]
        if r["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    ]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    annotations = deployment(documents)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9102"
    assert annotations["prometheus.io/scheme"] == "http"


def test_without_the_metrics_port_only_https_metrics_remain() -> None:
    """metrics.enabled=false: no metrics section, no port, Prometheus pointed at HTTPS."""
    documents = render({"metrics": {"enabled": False}})
    assert "metrics" not in config(documents)
    assert [p["name"] for p in broker_container(documents)["ports"]] == ["https"]
    annotations = deployment(documents)["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scheme"], annotations["prometheus.io/port"]) == (
        "https",
        "8443",
    )


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_prometheus_operator_monitors(kind: str) -> None:
    """ServiceMonitor/PodMonitor select this release's Service/pods and scrape port `metrics`."""
    key = "serviceMonitor" if kind == "ServiceMonitor" else "podMonitor"
    documents = render(
        {"metrics": {key: {"enabled": True, "interval": "15s", "labels": {"release": "kps"}}}}
    )
    assert not of_kind(documents, "PodMonitor" if kind == "ServiceMonitor" else "ServiceMonitor")
    [monitor] = of_kind(documents, kind)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "brokers"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["brokers"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    if kind == "ServiceMonitor":
        [service] = of_kind(documents, "Service")
        target_labels = service["metadata"]["labels"]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        [endpoint] = monitor["spec"]["endpoints"]
    else:
        target_labels = deployment(documents)["spec"]["template"]["metadata"]["labels"]
        port_names = {p["name"] for p in broker_container(documents)["ports"]}
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert selector.items() <= target_labels.items()
    assert endpoint["port"] in port_names
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "scheme": "http",
        "interval": "15s",
        "scrapeTimeout": "10s",
    }


def test_monitors_need_the_metrics_port() -> None:
    """A monitor without the plain-HTTP port would scrape nothing: refused at render."""
    with pytest.raises(Exception, match=r"needs metrics\.enabled"):
        render({"metrics": {"enabled": False, "podMonitor": {"enabled": True}}})


# -- workers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "workers"),
    [
        ("500m", 1),
        ("100m", 1),
        ("1000m", 1),
        ("2500m", 3),
        ("2", 2),
        (2, 2),
        ("1.5", 2),
        (1.5, 2),
        ("0.25", 1),
        (None, 1),
    ],
)
def test_auto_workers_follow_the_cpu_request(cpu: str | float | None, workers: int) -> None:
    """workers=auto: the CPU request rounded up to whole CPUs, at least 1, as --workers N."""
    requests: dict[str, Any] = {"memory": "128Mi"}
    if cpu is not None:
        requests["cpu"] = cpu
    args = broker_container(render({"resources": {"requests": requests}}))["args"]
    assert args[:3] == ["serve", "--config", "/etc/credential-broker/config/config.yaml"]
    assert args[3:] == ["--workers", str(workers)]


def test_explicit_workers_win() -> None:
    """A number is passed as is; zero is refused by the schema."""
    assert broker_container(render({"workers": 4}))["args"][-2:] == ["--workers", "4"]
    with pytest.raises(Exception, match="workers"):
        render({"workers": 0})


# -- pod options ------------------------------------------------------------------------------


def test_standard_pod_options_render() -> None:
    """Image digest, pull secrets, annotations, labels, env, volumes, sidecars, scheduling."""
    digest = "sha256:" + "0f" * 32
    documents = render(
        {
            "image": {"digest": digest, "tag": "ignored"},
            "imagePullSecrets": [{"name": "registry"}],
            "podAnnotations": {"example.org/owner": "identity"},
            "podLabels": {"example.org/tier": "security", "app.kubernetes.io/name": "hijack"},
            "priorityClassName": "high",
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
            ],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "extraVolumes": [{"name": "extra", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
            "extraContainers": [{"name": "log-shipper", "image": "shipper:1"}],
        }
    )
    template = deployment(documents)["spec"]["template"]
    pod = template["spec"]
    container = broker_container(documents)
    assert container["image"] == f"ghcr.io/spiffe-credential-broker/broker@{digest}"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert template["metadata"]["annotations"]["example.org/owner"] == "identity"
    assert "checksum/config" in template["metadata"]["annotations"]
    labels = template["metadata"]["labels"]
    assert labels["example.org/tier"] == "security"
    assert labels["app.kubernetes.io/name"] == "credential-broker"  # the selector still matches
    assert pod["priorityClassName"] == "high"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    assert {"name": "TZ", "value": "UTC"} in container["env"]
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in container["volumeMounts"]
    assert [c["name"] for c in pod["containers"]] == ["broker", "log-shipper"]


def test_image_tag_defaults_to_the_app_version() -> None:
    """Without a digest: repository:tag, the chart's appVersion by default."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = broker_container(render())["image"]
    assert image == f"ghcr.io/spiffe-credential-broker/broker:{app_version}"
    assert broker_container(render({"image": {"tag": "1.2.3"}}))["image"].endswith(":1.2.3")


FREE_FORM = {
    "resources",
    "tools",
    "podSecurityContext",
    "securityContext",
    "networkPolicy.clientPodLabels",
    "networkPolicy.monitoringNamespaceLabels",
}


def test_every_value_is_documented_in_the_chart_readme() -> None:
    """Every key of values.yaml appears in the README (free-form maps as a whole)."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for name, value in tree.items():
            path = f"{prefix}{name}"
            out.append(path)
            if isinstance(value, dict) and value and path not in FREE_FORM:
                out.extend(keys(value, f"{path}."))
        return out

    missing = [k for k in keys(values) if f"`{k}`" not in readme]
    assert missing == []


def test_redis_persistence_is_documented() -> None:
    """The chart says what Redis must keep: AOF persistence, in values.yaml and the README."""
    assert "appendonly yes" in (CHART / "values.yaml").read_text()
    assert "appendonly yes" in (CHART / "README.md").read_text()


# -- SPIRE registration ---------------------------------------------------------------------


def test_chart_registers_the_broker_with_its_own_spiffe_id_and_class() -> None:
    """spire.clusterSPIFFEIDs: className set; the broker's ID is exactly config.yaml's."""
    documents = render(
        {"spire": {"clusterSPIFFEIDs": {"enabled": True}, "className": "spire-system-spire"}}
    )
    ids = of_kind(documents, "ClusterSPIFFEID")
    assert len(ids) == 2
    for cluster_id in ids:
        assert cluster_id["apiVersion"] == "spire.spiffe.io/v1alpha1"
        assert cluster_id["spec"]["className"] == "spire-system-spire"
    broker, clients = ids
    assert broker["spec"]["spiffeIDTemplate"] == config(documents)["spiffe_id"]
    assert broker["spec"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "brokers"}
    }
    pod_labels = deployment(documents)["spec"]["template"]["metadata"]["labels"]
    assert broker["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert broker["spec"]["dnsNameTemplates"] == ["credential-broker.brokers.svc"]
    assert clients["spec"]["podSelector"] == {
        "matchLabels": {"credential-broker.spiffe.io/client": "true"}
    }
    assert not of_kind(render(), "ClusterSPIFFEID")  # off by default: CRDs may be absent


def test_class_names_agree_with_the_spire_charts_default() -> None:
    """entries.yaml and the chart default use the SPIRE charts' class (documented install)."""
    chart_default = yaml.safe_load((CHART / "values.yaml").read_text())["spire"]["className"]
    assert chart_default == "spire-mgmt-spire"  # "<namespace>-<release>": -n spire-mgmt spire
    for entry in yaml_documents(SPIRE / "entries.yaml"):
        assert entry["spec"]["className"] == chart_default


# -- the kustomization --------------------------------------------------------------------------


def _rendered_namespace() -> str:
    """The namespace the committed manifests' config.yaml assumes, from its SPIFFE ID."""
    [config_map] = [
        d
        for d in yaml_documents(MANIFESTS / "credential-broker.yaml")
        if d["kind"] == "ConfigMap" and "config.yaml" in d["data"]
    ]
    spiffe_id = yaml.safe_load(config_map["data"]["config.yaml"])["spiffe_id"]
    match = re.fullmatch(r"spiffe://[^/]+/ns/([^/]+)/sa/[^/]+", spiffe_id)
    assert match is not None
    return match.group(1)


def test_kustomization_namespace_is_the_one_the_config_assumes() -> None:
    """kustomization.yaml's namespace = the namespace in the rendered broker SPIFFE ID."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    namespace = _rendered_namespace()
    assert kustomization["namespace"] == namespace
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).is_file()
    [ns] = yaml_documents(MANIFESTS / "namespace.yaml")
    assert (ns["kind"], ns["metadata"]["name"]) == ("Namespace", namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for document in yaml_documents(MANIFESTS / "credential-broker.yaml"):
        assert document["metadata"]["namespace"] == namespace


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_builds_offline() -> None:
    """`kubectl kustomize k8s/manifests` builds, every object in the broker's namespace."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    documents = [d for d in yaml.safe_load_all(out) if d]
    namespace = _rendered_namespace()
    assert {d["kind"] for d in documents} >= {"Namespace", "Deployment", "Service", "ConfigMap"}
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == namespace


# -- register.sh ------------------------------------------------------------------------------


def fake_kubectl(directory: Path, output: str = "", status: int = 0) -> Path:
    """A kubectl that records its arguments and standard input, and answers as told."""
    (directory / "answer").write_text(output)
    script = directory / "kubectl"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{directory}/argv"\n'
        f'cat > "{directory}/stdin"\n'
        f'cat "{directory}/answer"\n'
        f"exit {status}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def run_register(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SPIRE / "register.sh")],
        env={**os.environ, "KUBECTL": str(tmp_path / "kubectl"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_register_runs_only_spire_server_in_the_container(tmp_path: Path) -> None:
    """No shell in the SPIRE image: kubectl exec runs spire-server entry create -data - alone."""
    fake_kubectl(tmp_path)
    result = run_register(tmp_path, TRUST_DOMAIN="prod.example.com")
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:2] == ["exec", "-i"]
    in_container = argv[argv.index("--") + 1 :]
    assert in_container == ["/opt/spire/bin/spire-server", "entry", "create", "-data", "-"]
    script = (SPIRE / "register.sh").read_text()
    assert not re.search(r"\bsh\s+-[cs]\b", script)
    entries = json.loads((tmp_path / "stdin").read_text())["entries"]
    ids = {e["spiffe_id"] for e in entries}
    assert "spiffe://prod.example.com/ns/credential-broker/sa/credential-broker" in ids
    assert all(i.startswith("spiffe://prod.example.com/") for i in ids)
    for entry in entries:
        SpiffeId(entry["spiffe_id"])


def test_register_is_rerunnable_and_reports_real_failures(tmp_path: Path) -> None:
    """Entries that already exist are fine; any other failure fails the script."""
    exists = (
        'Failed to create the following entry (code: AlreadyExists, msg: "similar entry '
        'already exists"):'
    )
    fake_kubectl(tmp_path, output=exists, status=1)
    assert run_register(tmp_path).returncode == 0
    denied = 'Failed to create the following entry (code: PermissionDenied, msg: "no"):'
    fake_kubectl(tmp_path, output=f"{exists}\n{denied}", status=1)
    assert run_register(tmp_path).returncode == 1
    assert run_register(tmp_path, TRUST_DOMAIN="Bad/Domain").returncode == 2


# -- SPIFFE IDs agree ---------------------------------------------------------------------------


def _apply_template(template: str, namespace: str, service_account: str) -> str:
    return (
        template.replace("{{ .TrustDomain }}", "example.org")
        .replace("{{ .PodMeta.Namespace }}", namespace)
        .replace("{{ .PodSpec.ServiceAccountName }}", service_account)
    )


def test_the_brokers_default_spiffe_id_agrees_everywhere() -> None:
    """Chart default, manifests, entries.yaml/.json, the Vault job and the agent example agree."""
    rendered = config(render(namespace="credential-broker"))
    assert rendered["spiffe_id"] == DEFAULT_BROKER_ID
    assert rendered["authentication"]["jwt_svid"]["audience"] == DEFAULT_BROKER_ID
    assert _rendered_namespace() == "credential-broker"

    [broker_entry] = [
        e
        for e in yaml_documents(SPIRE / "entries.yaml")
        if e["metadata"]["name"] == "credential-broker"
    ]
    template = broker_entry["spec"]["spiffeIDTemplate"]
    assert _apply_template(template, "credential-broker", "credential-broker") == DEFAULT_BROKER_ID

    entries = json.loads((SPIRE / "entries.json").read_text())["entries"]
    assert DEFAULT_BROKER_ID in {e["spiffe_id"] for e in entries}

    [job] = yaml_documents(ROOT / "k8s" / "vault" / "job.yaml")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BROKER_SPIFFE_ID"] == DEFAULT_BROKER_ID

    example = yaml_documents(ROOT / "k8s" / "examples" / "agent-pod.yaml")
    [agent] = of_kind(example, "Deployment")
    [hook] = agent["spec"]["template"]["spec"]["initContainers"]
    hook_env = {e["name"]: e.get("value") for e in hook["env"]}
    assert hook_env["BROKER_SPIFFE_ID"] == DEFAULT_BROKER_ID  # the hook's own default differs
    assert hook_env["BROKER_URL"].startswith("https://credential-broker.credential-broker.svc:")


def test_vault_job_binds_the_issuer_spire_signs_with() -> None:
    """The Vault job's OIDC discovery URL is server.conf's jwt_issuer; its CA file is mounted."""
    issuer = re.search(r'jwt_issuer\s*=\s*"([^"]+)"', (SPIRE / "server.conf").read_text())
    assert issuer is not None
    [job] = yaml_documents(ROOT / "k8s" / "vault" / "job.yaml")
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JWT_SVID_OIDC_DISCOVERY_URL"] == issuer.group(1)
    assert "JWT_SVID_PUBKEY_FILE" not in env  # a static key copy dies at SPIRE's next rotation
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(env["JWT_SVID_CA_FILE"]).parent) in mounts
    assert env["DB_TABLES"] == "tickets"
