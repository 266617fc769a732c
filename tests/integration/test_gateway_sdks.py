"""Drop-in: the official `openai` and `anthropic` SDKs through the gateway, key unchanged.

Only the SDK's base URL and API key change: the key is the agent's broker credential.
The upstream speaks the providers' JSON, non-streamed and streamed (server-sent events).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from tests.support.gateway import GatewayEnv, gateway_broker
from tests.support.openbao import KV_PATH, IssuerVault, issuer_vault
from tests.support.upstream import local_upstream

pytestmark = pytest.mark.vault


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerVault]:
    """OpenBao with the upstream's key in KV v2."""
    with issuer_vault(tmp_path_factory.mktemp("gateway-sdk-bao")) as vault:
        yield vault


@pytest.fixture
async def env(tmp_path: Path, bao: IssuerVault) -> AsyncIterator[GatewayEnv]:
    """The broker with its gateway in front of the local upstream."""
    secret = bao.root.secrets.kv.v2.read_secret_version(
        path=KV_PATH, mount_point="secret", raise_on_deleted_version=True
    )
    async with (
        local_upstream(secret["data"]["data"]["api_key"]) as upstream,
        gateway_broker(tmp_path / "dev", bao, upstream) as running,
    ):
        yield running


async def test_openai_sdk_through_the_gateway(env: GatewayEnv) -> None:
    """AsyncOpenAI with base_url = the gateway route and api_key = the broker credential."""
    token = await env.credential()
    async with httpx2.AsyncClient(verify=env.context(), trust_env=False) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{env.url}/llm/v1", api_key=token, http_client=http, max_retries=0
        )
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "Hello"
        assert completion.usage is not None
        assert completion.usage.total_tokens == 30
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello"
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="o9-unlisted", messages=[{"role": "user", "content": "hi"}]
            )
    assert env.upstream.seen[-1]["Authorization"] == f"Bearer {env.upstream.key}"
    records = await env.settled_records("gateway.request")
    assert [r["gateway"]["status"] for r in records] == [200, 200, 403]
    assert records[1]["gateway"]["usage"] == {"input_tokens": 10, "output_tokens": 20}


async def test_anthropic_sdk_through_the_gateway(env: GatewayEnv) -> None:
    """AsyncAnthropic sends the broker credential as `x-api-key`; the gateway swaps it."""
    token = await env.credential()
    async with httpx2.AsyncClient(verify=env.context(), trust_env=False) as http:
        client = anthropic.AsyncAnthropic(
            base_url=f"{env.url}/claude", api_key=token, http_client=http, max_retries=0
        )
        message = await client.messages.create(
            model="claude-gateway-test",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "Hello"
        async with client.messages.stream(
            model="claude-gateway-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text == "Hello"
    seen = env.upstream.seen[-1]
    assert seen["x-api-key"] == env.upstream.key
    assert all(token not in value for value in seen.values())
    records = await env.settled_records("gateway.request")
    assert [r["gateway"]["status"] for r in records] == [200, 200]
    assert records[1]["gateway"]["usage"] == {"input_tokens": 10, "output_tokens": 20}
