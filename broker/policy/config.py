"""The `policy:` section: which engine decides, and where its policy comes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.reader import Reader

__all__ = ["PolicySettings", "parse_policy"]

DEFAULT_WATCH_SECONDS = 2.0
DEFAULT_REGO_QUERY = "data.broker.decision"
_QUERY = r"data(\.[A-Za-z_][A-Za-z0-9_]*)+"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Which engine decides, where its policy comes from, how often files are checked.

    Attributes:
        file: The YAML policy (`engine: rules`); None with `engine: rego`.
        watch_seconds: How often the files are checked for changes.
        engine: `rules` (the YAML rule engine) or `rego` (embedded Rego, `regopy`).
        module: One `.rego` file (`engine: rego`).
        bundle: A directory of `.rego` files and an optional `data.json` (`engine: rego`).
        query: The Rego rule that holds the decision, e.g. `data.broker.decision`.
    """

    file: Path | None
    watch_seconds: float = DEFAULT_WATCH_SECONDS
    engine: str = "rules"
    module: Path | None = None
    bundle: Path | None = None
    query: str = DEFAULT_REGO_QUERY


def parse_policy(reader: Reader) -> PolicySettings:
    """Parse the `policy:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    engine = reader.string("engine", "rules", choices=("rules", "rego"))
    if engine == "rules":
        policy = PolicySettings(file=reader.path("file"))
    else:
        module, bundle = reader.optional_path("module"), reader.optional_path("bundle")
        if (module is None) == (bundle is None):
            raise reader.error("module", "engine rego needs exactly one of 'module' or 'bundle'")
        policy = PolicySettings(
            file=None,
            engine=engine,
            module=module,
            bundle=bundle,
            query=reader.string("query", DEFAULT_REGO_QUERY, pattern=_QUERY),
        )
    policy = PolicySettings(
        file=policy.file,
        watch_seconds=reader.number(
            "watch_seconds", DEFAULT_WATCH_SECONDS, minimum=0.1, maximum=3600
        ),
        engine=policy.engine,
        module=policy.module,
        bundle=policy.bundle,
        query=policy.query,
    )
    reader.finish()
    return policy
