"""One load of a Rego policy: its sources, the compiled bundle, named grants, the registry.

Sources are the modules and the data document, read from the settings (`module: FILE`,
or `bundle: DIR`: every `*.rego` in it and an optional `data.json`) or from a version kept
beside the audit log (`broker audit explain`). Two keys of the data document are the
broker's as well as the policy's, read once per load:
- `agents`: the agent registry, in the YAML policy's `agents:` form (CONTRACT section 8);
- `grants`: named grants (`{name: {max_ttl, scopes, limits, ...}}`); a result may grant a
  tool by name (`"tools": {"crm": "name"}`) instead of spelling the grant out, so the
  per-request result stays small (rego-cpp's cost grows with the size of the values an
  evaluation builds).
The policy's id and version are the rule `policy` beside the query (`{"id", "version"}`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.config.reader import Reader
from broker.errors import ConfigError
from broker.policy.config import DEFAULT_REGO_QUERY, PolicySettings
from broker.policy.loader import load_agents
from broker.policy.model import AgentEntry, Policy
from broker.policy.rego_cpp import Bundle, Interpreter, RegoCppError, build
from broker.policy.rego_decisions import GrantSpec, grant_spec
from broker.policy.rego_reads import input_fields

__all__ = ["RegoProgram", "RegoSources", "archived_sources", "compile_rego", "read_sources"]

_MAX_TEXT = 512


@dataclass(frozen=True, slots=True)
class RegoSources:
    """What a Rego policy is made of.

    Attributes:
        modules: Module text by file name.
        data: The data document (a JSON object), or None.
        query: The rule holding the decision (`data.broker.decision`).
        where: The file or directory, for messages.
        single_module: Whether it was one `.rego` file (kept as such, see `content`).
    """

    modules: dict[str, str]
    data: dict[str, object] | None
    query: str
    where: str
    single_module: bool = False

    def content(self) -> tuple[bytes, str]:
        """The bytes kept for this version, and their suffix.

        One module with the default query is kept as its own text (`.rego`); anything
        else as one JSON document of modules, data and query (`.json`).
        """
        if self.single_module and self.query == DEFAULT_REGO_QUERY and self.data is None:
            return next(iter(self.modules.values())).encode(), "rego"
        document = {"modules": self.modules, "data": self.data, "query": self.query}
        return json.dumps(document, sort_keys=True).encode(), "json"


def read_sources(settings: PolicySettings) -> RegoSources:
    """The modules and data document named by the settings.

    Raises:
        ConfigError: Unreadable files, a data document that is not a JSON object.
    """
    where = settings.module or settings.bundle
    try:
        if settings.module is not None:
            modules = {settings.module.name: settings.module.read_text()}
            return RegoSources(modules, None, settings.query, str(where), single_module=True)
        assert settings.bundle is not None
        modules = {p.name: p.read_text() for p in sorted(settings.bundle.glob("*.rego"))}
        data_file = settings.bundle / "data.json"
        data = json.loads(data_file.read_text()) if data_file.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    if not modules:
        raise ConfigError(f"{where}: no .rego files")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}/data.json: must be a JSON object")
    return RegoSources(modules, data, settings.query, str(where))


def archived_sources(raw: bytes, suffix: str, where: Path) -> RegoSources:
    """The sources of a kept version (`.rego`: one module; `.json`: modules, data, query).

    Raises:
        ConfigError: Not a kept Rego version.
    """
    try:
        if suffix == "rego":
            return RegoSources({"policy.rego": raw.decode()}, None, DEFAULT_REGO_QUERY, str(where))
        document = json.loads(raw)
        modules = {str(k): str(v) for k, v in document["modules"].items()}
        data = document.get("data")
        query = str(document.get("query") or DEFAULT_REGO_QUERY)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{where}: not a kept Rego policy ({exc})") from None
    return RegoSources(modules, data if isinstance(data, dict) else None, query, str(where))


@dataclass(frozen=True, slots=True)
class RegoProgram:
    """One compiled load of a Rego policy.

    `reads` is the set of top-level input fields the modules read (`rego_reads`), or None
    when that cannot be told (the input read whole, a clock or network builtin): a result
    is reused for an input that agrees on those fields, never when None.
    """

    id: str
    declared_version: str
    content_hash: str
    raw: bytes
    suffix: str
    bundle: Bundle
    entrypoint: bytes
    grants: Mapping[str, GrantSpec] = field(default_factory=dict)
    agents: tuple[AgentEntry, ...] = ()
    reads: frozenset[str] | None = None

    @property
    def version(self) -> str:
        """Declared version plus content hash, like the rule engine's."""
        return f"{self.declared_version}+sha256:{self.content_hash[:12]}"

    @property
    def policy(self) -> Policy:
        """The policy as the registry and directory see it: the agents, no YAML rules."""
        return Policy(self.id, self.declared_version, self.content_hash, (), agents=self.agents)


def _rego_error(exc: Exception) -> str:
    # rego-cpp errors carry a whole AST dump; the messages and positions are what matter.
    messages = re.findall(r"errormsg \d+:([^)]*)\)", str(exc))
    return "; ".join(dict.fromkeys(messages)) or str(exc).splitlines()[0][:_MAX_TEXT]


def _grants(sources: RegoSources) -> dict[str, GrantSpec]:
    """The named grants, read once per load (a malformed one refuses the load)."""
    grants = (sources.data or {}).get("grants", {})
    if not isinstance(grants, dict):
        raise ConfigError(f"{sources.where}: data: grants: must be an object")
    out: dict[str, GrantSpec] = {}
    for name, grant in grants.items():
        spec = grant_spec(grant, name) if isinstance(grant, dict) else None
        if spec is None or spec.limits is None:
            raise ConfigError(f"{sources.where}: data: grants.{name}: not a valid grant")
        out[name] = spec
    return out


def compile_rego(sources: RegoSources, *, known_tools: frozenset[str] | None = None) -> RegoProgram:
    """Compile the policy once, and read its id, version, grants and registry.

    Raises:
        ConfigError: A module that does not compile, a malformed registry or grant.
    """
    package_path = sources.query.removeprefix("data.").split(".")
    entrypoint = "/".join(package_path)
    meta_entrypoint = "/".join([*package_path[:-1], "policy"])
    raw, suffix = sources.content()
    try:
        bundle = build(sources.modules, sources.data, [entrypoint, meta_entrypoint])
        probe = Interpreter()
        probe.set_input({})
        meta = probe.query(bundle, meta_entrypoint.encode())
    except RegoCppError as exc:
        raise ConfigError(f"{sources.where}: {_rego_error(exc)}") from None
    meta = meta if isinstance(meta, dict) else {}
    policy_id, version = meta.get("id"), meta.get("version")
    registry = Reader(Path(f"{sources.where} (data)"), sources.data or {})
    return RegoProgram(
        id=policy_id if isinstance(policy_id, str) and policy_id else "rego",
        declared_version=str(version) if isinstance(version, str | int) else "0",
        content_hash=hashlib.sha256(raw).hexdigest(),
        raw=raw,
        suffix=suffix,
        bundle=bundle,
        entrypoint=entrypoint.encode(),
        grants=_grants(sources),
        agents=load_agents(registry, known_tools),
        reads=input_fields(sources.modules),
    )
