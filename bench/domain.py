"""The development trust domain, bench policies and broker configurations.

Everything here goes through the broker's outside interface only (contract sections 1, 2
and 5): `broker dev init`, `broker dev jwt-svid`, `broker dev user-token`,
`broker policy check`, and copies of the generated `config.yaml` and `policy.yaml` edited
with yaml. The internals are being rewritten; the harness must not notice.
"""

from __future__ import annotations

import copy
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import procs

# libyaml's emitter when present: PyYAML's pure-Python one takes ~10 s for 10,000 rules.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

__all__ = ["DevDomain", "bench_policy", "big_policy", "broker_config", "init_domain"]

TRUST_DOMAIN = "example.org"
# The dev policy limits `claims` to 60 credentials per user per minute; the bench raises
# every rate limit to this (the loader's maximum) so that the limit is still checked and
# counted on every request, but never refuses one.
BENCH_LIMIT = 1_000_000
FILL_TOOL_PREFIX = "bench_fill_"


def _broker(*args: str) -> str:
    out = subprocess.run(
        [procs.tool("broker"), *args], capture_output=True, text=True, check=False, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"broker {' '.join(args[:2])} failed: {out.stderr.strip()}")
    return out.stdout.strip()


@dataclass(frozen=True, slots=True)
class DevDomain:
    """Paths of a development trust domain (contract section 2)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def policy(self) -> Path:
        return self.root / "policy.yaml"

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "bundle.pem"

    @property
    def jwks(self) -> Path:
        return self.root / "jwt" / "bundle.jwks"

    @property
    def broker_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/broker"

    def agent_id(self, name: str) -> str:
        return f"spiffe://{TRUST_DOMAIN}/agent/{name}"

    def agent_cert(self, name: str) -> tuple[Path, Path]:
        """(svid.pem, key.pem) of a demo agent."""
        directory = self.root / "agents" / name
        return directory / "svid.pem", directory / "key.pem"

    def jwt_svid(self, agent: str, *, ttl: int = 3600) -> str:
        """A JWT-SVID for a demo agent; `broker dev jwt-svid`'s default audience is the broker."""
        token = _broker(
            "dev", "jwt-svid", "--dir", str(self.root), "--agent", agent, "--ttl", str(ttl)
        )
        return token.splitlines()[-1].strip()

    def user_token(self, user: str) -> str:
        """A user token from the development identity provider (1 hour by default)."""
        return (
            _broker("dev", "user-token", "--dir", str(self.root), "--user", user)
            .splitlines()[-1]
            .strip()
        )

    def check_policy(self, policy: Path, config: Path | None = None) -> str:
        """`broker policy check` (against a configuration's tools when given); its summary line.

        Raises:
            RuntimeError: The policy is invalid.
        """
        args = ["policy", "check", str(policy)]
        if config is not None:
            args += ["--config", str(config)]
        return _broker(*args)


def init_domain(root: Path) -> DevDomain:
    """`broker dev init --dir ROOT`, and a check that the contract's files are there."""
    _broker("dev", "init", "--dir", str(root))
    domain = DevDomain(root)
    for path in (
        domain.config,
        domain.policy,
        domain.ca,
        domain.jwks,
        *domain.agent_cert("analytics"),
    ):
        if not path.exists():
            raise RuntimeError(f"broker dev init did not create {path}")
    return domain


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise TypeError(f"{path}: not a YAML mapping")
    return data


def _rule_for(policy: dict[str, Any], agent_id: str) -> dict[str, Any]:
    for rule in policy.get("rules", []):
        if agent_id in rule.get("agents", []):
            return rule  # type: ignore[no-any-return]
    raise RuntimeError(f"the dev policy has no rule for {agent_id}")


def bench_policy(domain: DevDomain, out: Path) -> dict[str, Any]:
    """The dev policy with every rate limit raised to `BENCH_LIMIT`; checks the story first.

    Raises:
        RuntimeError: The dev policy no longer tells the story the rows rely on (analytics
            gets analytics_api without a user and without a limit; claims gets
            customer_data_api for a user).
    """
    policy = _load(domain.policy)
    analytics = _rule_for(policy, domain.agent_id("analytics"))
    if "analytics_api" not in analytics.get("tools", []):
        raise RuntimeError("dev policy: analytics may no longer get analytics_api")
    if (analytics.get("user") or {}).get("required"):
        raise RuntimeError("dev policy: analytics now needs a user token")
    if analytics.get("rate_limits") or analytics.get("budgets"):
        raise RuntimeError("dev policy: analytics now has a rate limit or budget")
    if "customer_data_api" in analytics.get("tools", []):
        raise RuntimeError("dev policy: analytics may now get customer_data_api (the 403 row)")
    claims = _rule_for(policy, domain.agent_id("claims"))
    if "customer_data_api" not in claims.get("tools", []):
        raise RuntimeError("dev policy: claims may no longer get customer_data_api")
    for rule in policy.get("rules", []):
        for limit in rule.get("rate_limits", []) or []:
            limit["limit"] = max(int(limit["limit"]), BENCH_LIMIT)
    policy["description"] = (
        "The development policy, with rate limits raised for the benchmark (bench/domain.py)."
    )
    out.write_text(yaml.dump(policy, Dumper=_DUMPER, sort_keys=False))
    return policy


def big_policy(
    base: dict[str, Any], out: Path, *, agents: int, fill_tools: list[str], analytics_id: str
) -> None:
    """The bench policy plus `agents` generated agent rules in the dev policy's schema.

    The generated rules vary the way real ones would: some act for users (with issuers,
    tiers and per-user rate limits), some are batch agents. When `fill_tools` is given, the
    analytics agent may also get those (the RSS row's fast fill; see bench/README.md).
    """
    policy = copy.deepcopy(base)
    policy["id"] = "bench-10k"
    tools = ["customer_data_api", "ticketing_api", "analytics_api"]
    rules = policy.setdefault("rules", [])
    if fill_tools:
        rules.append(
            {
                "id": "analytics-bench-fill",
                "description": "Bench only: many tools per request, to track credentials fast.",
                "agents": [analytics_id],
                "tools": fill_tools,
                "user": {"required": False},
                "max_ttl_seconds": 300,
            }
        )
    for i in range(agents):
        rule: dict[str, Any] = {
            "id": f"bench-agent-{i:05d}",
            "description": f"Generated agent {i} (bench).",
            "agents": [f"spiffe://{TRUST_DOMAIN}/agent/bench-{i:05d}"],
            "tools": [tools[i % 3], tools[(i + 1) % 3]],
            "max_ttl_seconds": 300 if i % 2 else 120,
        }
        if i % 2:
            rule["user"] = {
                "required": True,
                "issuers": [f"https://idp.{TRUST_DOMAIN}"],
                "tiers": ["gold", "standard"],
            }
            rule["rate_limits"] = [{"per": ["user"], "limit": 60, "window_seconds": 60}]
        else:
            rule["user"] = {"required": False}
        rules.append(rule)
    out.write_text(yaml.dump(policy, Dumper=_DUMPER, sort_keys=False))


def broker_config(
    domain: DevDomain,
    out_dir: Path,
    *,
    port: int,
    policy: Path,
    durable_audit: bool = True,
    fill_tools: list[str] | None = None,
    gateway: dict[str, Any] | None = None,
) -> tuple[Path, Path | None]:
    """A copy of the generated config.yaml for one broker run.

    Changes only the port, the log level, the state and audit paths (into `out_dir`), the
    policy file, and, for the RSS row, extra tools cloned from `analytics_api`. Written
    next to the original so that its other relative paths still resolve.

    Returns:
        The configuration file, and the audit log it writes (None for /dev/null).
    """
    data = _load(domain.config)
    data["listen"]["port"] = port
    data["log_level"] = "warning"
    data.setdefault("state", {})["path"] = str(out_dir / "state.db")
    data.setdefault("policy", {})["file"] = str(policy)
    audit_path: Path | None
    if durable_audit:
        audit_path = out_dir / "audit.log"
        data.setdefault("audit", {})["path"] = str(audit_path)
    else:
        audit_path = None
        data["audit"] = {"sink": "file", "path": "/dev/null", "fsync": False}
    for name in fill_tools or []:
        tool = dict(data["tools"]["analytics_api"])
        tool["audience"] = f"https://{name.replace('_', '-')}.{TRUST_DOMAIN}"
        data["tools"][name] = tool
    if gateway is not None:
        data["gateway"] = gateway
    config = domain.root / f"config-{out_dir.name}.yaml"
    config.write_text(yaml.dump(data, Dumper=_DUMPER, sort_keys=False))
    return config, audit_path
