"""The `gateway:` section: a valid one becomes frozen settings; each mistake names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.clock import SystemClock
from broker.config.settings import Settings, load_settings
from broker.dev.trust_domain import init_trust_domain
from broker.errors import ConfigError
from broker.gateway.config import TokenHeader
from broker.workers import for_worker


def route(**override: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tool": "analytics_api",
        "upstream": "https://api.openai.com",
        "key": {"source": "file", "file": "upstream.key"},
        "path_prefixes": ["/v1/chat/"],
        "models": ["gpt-4o-mini"],
        "prices": {"gpt-4o-mini": {"input": 1, "output": 4}},
        "budgets": [{"per": "user", "window_seconds": 3600, "requests": 10, "spend": 5000}],
    }
    base.update(override)
    return {key: value for key, value in base.items() if value is not None}


def load(tmp_path: Path, gateway: dict[str, Any]) -> Settings:
    td, _ = init_trust_domain(tmp_path / "dev", None, SystemClock())
    config = yaml.safe_load(td.config.read_text())
    config["gateway"] = gateway
    td.config.write_text(yaml.safe_dump(config))
    return load_settings(td.config)


def test_gateway_section_parses(tmp_path: Path) -> None:
    """Routes, key sources, prices and budgets become frozen settings."""
    settings = load(tmp_path, {"port": 0, "routes": {"llm": route()}})
    assert settings.gateway is not None
    llm = settings.gateway.routes["llm"]
    assert llm.tool == "analytics_api"
    assert llm.key_header is TokenHeader.AUTHORIZATION
    assert llm.key_source.kind == "file"
    assert llm.methods == frozenset({"GET", "POST"})
    assert llm.models == frozenset({"gpt-4o-mini"})
    assert llm.prices["gpt-4o-mini"].output_micros == 4
    assert llm.budgets[0].spend_micros == 5000


@pytest.mark.parametrize(
    ("gateway", "key", "message"),
    [
        ({"routes": {}}, "gateway.routes", "at least one route"),
        ({"routes": {"llm": route(tool="nope")}}, "gateway.routes.llm.tool", "no configured tool"),
        (
            {"routes": {"llm": route(upstream="http://example.com")}},
            "gateway.routes.llm.upstream",
            "plain http only on loopback",
        ),
        (
            {"routes": {"llm": route(key={"source": "vault", "path": "x"})}},
            "vault",
            "reads its key from Vault",
        ),
        ({"routes": {"llm": route(prices=None)}}, "gateway.routes.llm.prices", "is required"),
        (
            {"routes": {"llm": route(path_prefixes=["v1"])}},
            "gateway.routes.llm.path_prefixes",
            "absolute",
        ),
        (
            {"routes": {"llm": route(budgets=[{"per": "agent", "window_seconds": 60}])}},
            "requests",
            "`spend` is required",
        ),
        ({"routes": {"llm": route(key_header="cookie")}}, "key_header", "must be one of"),
        ({"routes": {"llm": route(colour="red")}}, "colour", "is not a known setting"),
    ],
)
def test_mistakes_name_the_key(
    tmp_path: Path, gateway: dict[str, Any], key: str, message: str
) -> None:
    """Each mistake in the section names the file, the key and the problem."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, gateway)
    assert key in str(caught.value)
    assert message in str(caught.value)


def test_workers_need_a_fixed_gateway_port(tmp_path: Path) -> None:
    """`--workers N`: every worker binds the gateway's port, so port 0 is refused up front."""
    settings = load(tmp_path, {"port": 0, "routes": {"llm": route()}})
    settings = dataclasses.replace(settings, listen=dataclasses.replace(settings.listen, port=8443))
    with pytest.raises(ConfigError, match=r"gateway\.port: --workers needs a fixed port"):
        for_worker(settings, 0, 2)
    assert for_worker(settings, 0, 1).gateway == settings.gateway  # one process: any port
    assert settings.gateway is not None
    fixed = dataclasses.replace(settings, gateway=dataclasses.replace(settings.gateway, port=9443))
    assert for_worker(fixed, 1, 2).gateway == fixed.gateway
