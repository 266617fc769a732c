"""The gateway end to end: OpenBao holds the upstream key, a local upstream requires it.

The broker and its gateway run in-process over real TLS; the upstream key lives in a real
OpenBao (KV v2) or a file; agents use the development trust domain's SVIDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.audit.chain import verify_files
from tests.support.broker import eventually, free_port
from tests.support.gateway import GatewayEnv, gateway_broker
from tests.support.openbao import KV_PATH, IssuerVault, issuer_vault
from tests.support.upstream import local_upstream

pytestmark = pytest.mark.vault

CHAT = "/llm/v1/chat/completions"
MESSAGE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerVault]:
    """OpenBao with the upstream's key in KV v2."""
    with issuer_vault(tmp_path_factory.mktemp("gateway-bao")) as vault:
        yield vault


def upstream_key(bao: IssuerVault) -> str:
    secret = bao.root.secrets.kv.v2.read_secret_version(
        path=KV_PATH, mount_point="secret", raise_on_deleted_version=True
    )
    key = secret["data"]["data"]["api_key"]
    assert isinstance(key, str)
    return key


@pytest.fixture
async def env(tmp_path: Path, bao: IssuerVault) -> AsyncIterator[GatewayEnv]:
    """The broker with its gateway, and the upstream requiring the key held in OpenBao."""
    async with (
        local_upstream(upstream_key(bao)) as upstream,
        gateway_broker(
            tmp_path / "dev",
            bao,
            upstream,
            metered={
                "tool": "analytics_api",
                "upstream": upstream.url,
                "key": {"source": "vault", "path": KV_PATH},
                "methods": ["POST"],
                "path_prefixes": ["/v1/chat/completions"],
                "prices": {"gpt-4o-mini": {"input": 10, "output": 40}},
                "budgets": [{"per": "agent", "window_seconds": 3600, "spend": 1000}],
            },
            nokey={
                "tool": "analytics_api",
                "upstream": upstream.url,
                "key": {"source": "file", "file": str(tmp_path / "absent.key")},
                "methods": ["POST"],
            },
            down={
                "tool": "analytics_api",
                "upstream": f"http://127.0.0.1:{free_port()}",
                "key": {"source": "vault", "path": KV_PATH},
                "methods": ["POST"],
                "budgets": [{"per": "agent", "window_seconds": 3600, "requests": 2}],
            },
            flaky={
                "tool": "analytics_api",
                "upstream": upstream.url,
                "key": {"source": "file", "file": str(tmp_path / "flaky.key")},
                "methods": ["POST"],
                "budgets": [{"per": "agent", "window_seconds": 3600, "requests": 3}],
            },
            named={  # by host name: a cookie jar would keep this upstream's cookies
                "tool": "analytics_api",
                "upstream": upstream.url.replace("127.0.0.1", "localhost"),
                "key": {"source": "vault", "path": KV_PATH},
                "methods": ["POST"],
            },
        ) as running,
    ):
        yield running


def streamed_chat(session: aiohttp.ClientSession, env: GatewayEnv, path: str, token: str) -> Any:
    """POST a streamed chat request (`"stream": true`) as the agent holding `token`."""
    return session.post(
        f"{env.url}{path}",
        json={**MESSAGE, "stream": True},
        headers={"Authorization": f"Bearer {token}"},
    )


async def last_request(env: GatewayEnv) -> dict[str, Any]:
    return (await env.settled_records("gateway.request"))[-1]


async def test_agent_calls_upstream_without_holding_the_key(env: GatewayEnv) -> None:
    """The call succeeds with the real key added; the agent's token never reaches upstream."""
    token = await env.credential()
    async with (
        env.session() as session,
        session.post(
            f"{env.url}{CHAT}?api-version=q-secret-value",
            json=MESSAGE,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        assert response.headers["X-Upstream"] == "yes"
    assert body["choices"][0]["message"]["content"] == "Hello"
    seen = env.upstream.seen[-1]
    assert seen["Authorization"] == f"Bearer {env.upstream.key}"
    assert all(token not in value for value in seen.values())
    assert env.upstream.paths[-1] == "/v1/chat/completions?api-version=q-secret-value"
    forwarding = (await env.settled_records("gateway.forwarding"))[-1]
    record = await last_request(env)
    assert forwarding["request_id"] == record["request_id"]
    assert record["decision"] == "allow"
    assert record["agent"]["spiffe_id"] == "spiffe://example.org/agent/analytics"
    assert record["delegation_chain"] == ["spiffe://example.org/agent/analytics"]
    assert record["gateway"]["route"] == "llm"
    assert record["gateway"]["path"] == "/v1/chat/completions"
    assert record["gateway"]["status"] == 200
    assert record["gateway"]["model"] == "gpt-4o-mini"
    assert record["gateway"]["usage"] == {"input_tokens": 10, "output_tokens": 20}
    assert record["gateway"]["bytes_out"] > 0
    assert verify_files([env.broker.td.root / "audit.log"]).ok  # the same hash chain
    audit = (env.broker.td.root / "audit.log").read_text()
    for secret in (env.upstream.key, token, "q-secret-value", '"content": "hi"'):
        assert secret not in audit


async def test_upstream_cookies_are_not_kept_for_other_requests(env: GatewayEnv) -> None:
    """The upstream pool is shared by every agent: a cookie it sets reaches only its caller."""
    token = await env.credential()
    for _ in range(2):
        async with (
            env.session() as session,
            session.post(
                f"{env.url}/named/v1/chat/completions",
                json=MESSAGE,
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            assert "upstream_session=s1" in response.headers["Set-Cookie"]  # passed through
    assert "Cookie" not in env.upstream.seen[-1]


async def test_the_upstream_answers_uncompressed_so_usage_is_metered(env: GatewayEnv) -> None:
    """An agent asking for gzip cannot hide its usage: the upstream is asked for identity."""
    token = await env.credential()
    async with (
        env.session() as session,
        session.post(
            f"{env.url}{CHAT}",
            json=MESSAGE,
            headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip, br"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
    assert env.upstream.seen[-1]["Accept-Encoding"] == "identity"
    assert (await last_request(env))["gateway"]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 20,
    }


async def refused(
    env: GatewayEnv,
    path: str,
    *,
    token: str | None,
    agent: str | None = "analytics",
    body: object = MESSAGE,
    header: str = "Authorization",
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    headers = {header: f"Bearer {token}" if header == "Authorization" else str(token)}
    before = len(env.upstream.seen)
    async with (
        env.session(agent) as session,
        session.post(f"{env.url}{path}", json=body, headers=headers if token else {}) as response,
    ):
        problem = await response.json(content_type=None)
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert len(env.upstream.seen) == before, "a refused request reached the upstream"
        return response.status, problem, await last_request(env)


async def test_revoked_credential_is_refused(env: GatewayEnv) -> None:
    """A revoked credential: 401 and an audit record saying so."""
    token = await env.credential()
    jti = json.loads(_payload(token))["jti"]
    revoke = await env.broker.agent("analytics").request(
        "POST", "/v1/revoke", json_body={"credential_id": jti}
    )
    assert revoke.status == 200
    status, problem, record = await refused(env, CHAT, token=token)
    assert status == 401
    assert problem["reasons"] == ["revoked"]
    assert record["decision"] == "deny"
    assert record["reasons"] == ["revoked"]


async def test_revoked_agent_is_refused(env: GatewayEnv) -> None:
    """An agent revoked by an admin: its live credential is refused at once (401)."""
    token = await env.credential()
    revoke = await env.broker.agent("admin").request(
        "POST",
        "/v1/admin/agents/revoke",
        json_body={"spiffe_id": "spiffe://example.org/agent/analytics"},
    )
    assert revoke.status == 200, revoke.body
    status, _problem, record = await refused(env, CHAT, token=token)
    assert status == 401
    assert record["reasons"] in (["revoked"], ["agent_revoked"])


async def test_wrong_audience_is_refused(env: GatewayEnv) -> None:
    """A credential for another tool (another `aud`): 401."""
    token = await env.credential("claims", "customer_data_api")
    status, _problem, record = await refused(env, CHAT, token=token, agent="claims")
    assert status == 401
    assert record["reasons"] == ["wrong_audience"]


async def test_token_replayed_from_another_certificate_is_refused(env: GatewayEnv) -> None:
    """A `cnf`-bound credential over another client certificate, or none: 401."""
    token = await env.credential()
    for agent in ("claims", None):
        status, _problem, record = await refused(env, CHAT, token=token, agent=agent)
        assert status == 401
        assert record["reasons"] == ["cnf_mismatch"]


async def test_missing_and_forged_tokens_are_refused(env: GatewayEnv) -> None:
    """No credential, or one that does not verify: 401."""
    status, _problem, record = await refused(env, CHAT, token=None)
    assert (status, record["reasons"]) == (401, ["missing_token"])
    status, _problem, record = await refused(env, CHAT, token="eyJhbGciOiJub25lIn0.e30.")
    assert (status, record["reasons"]) == (401, ["invalid_token"])


async def test_path_outside_the_prefixes_is_refused(env: GatewayEnv) -> None:
    """A path outside the route's prefixes (or smuggled with dot segments): 403."""
    token = await env.credential()
    for path in ("/llm/v1/embeddings", "/llm/v1/chat/%2e%2e/embeddings"):
        status, problem, record = await refused(env, path, token=token)
        assert status == 403
        assert problem["reasons"] == ["path_not_allowed"]
        assert record["reasons"] == ["path_not_allowed"]


async def test_model_outside_the_allow_list_is_refused(env: GatewayEnv) -> None:
    """A model outside the route's allow-list: 403 with reasons."""
    token = await env.credential()
    status, problem, record = await refused(
        env, CHAT, token=token, body={**MESSAGE, "model": "gpt-5-expensive"}
    )
    assert status == 403
    assert problem["reasons"] == ["model_not_allowed"]
    assert record["gateway"]["model"] == "gpt-5-expensive"


async def test_exhausted_spend_budget_is_refused(env: GatewayEnv) -> None:
    """Spend from reported usage fills the budget; the next request gets 429 Retry-After."""
    token = await env.credential()
    headers = {"Authorization": f"Bearer {token}"}
    async with env.session() as session:
        for _ in range(2):  # 900 micro-units each (10 x 10 + 20 x 40), budget 1000
            async with session.post(
                f"{env.url}/metered/v1/chat/completions", json=MESSAGE, headers=headers
            ) as response:
                assert response.status == 200
                await response.read()
            assert (await last_request(env))["gateway"]["cost_micros"] == 900
        async with session.post(
            f"{env.url}/metered/v1/chat/completions", json=MESSAGE, headers=headers
        ) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) > 0
            problem = await response.json(content_type=None)
    assert problem["reasons"] == ["budget_exhausted"]
    assert (await last_request(env))["reasons"] == ["budget_exhausted:spend"]
    assert len(env.upstream.seen) == 2


async def test_streamed_response_arrives_incrementally(env: GatewayEnv) -> None:
    """The first server-sent event reaches the agent before the upstream has finished."""
    env.upstream.hold = True
    token = await env.credential()
    async with (
        env.session() as session,
        streamed_chat(session, env, CHAT, token) as response,
    ):
        assert response.status == 200
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        assert not env.upstream.finished.is_set()
        env.upstream.release.set()
        rest = await response.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    record = await last_request(env)
    assert record["gateway"]["usage"] == {"input_tokens": 10, "output_tokens": 20}


async def test_request_body_streams_upstream(env: GatewayEnv) -> None:
    """A chunked upload reaches the upstream before the agent has sent all of it."""
    token = await env.credential()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.wait_for(env.upstream.got_first.wait(), 5)  # buffering would hang here
        yield b"y" * 1000

    async with (
        env.session() as session,
        session.post(
            f"{env.url}/claude/v1/messages/upload",
            data=body(),
            headers={"x-api-key": token},
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json()) == {"bytes": 2000}
    assert (await last_request(env))["gateway"]["bytes_in"] == 2000


async def test_key_source_and_upstream_failures(env: GatewayEnv) -> None:
    """Key unreadable: 503, nothing forwarded; upstream unreachable: 502."""
    token = await env.credential()
    headers = {"Authorization": f"Bearer {token}"}
    async with env.session() as session:
        async with session.post(f"{env.url}/nokey/v1/x", json={}, headers=headers) as response:
            assert response.status == 503
        assert (await last_request(env))["reasons"] == ["key_unavailable"]
        async with session.post(f"{env.url}/down/v1/x", json={}, headers=headers) as response:
            assert response.status == 502
        assert (await last_request(env))["reasons"] == ["upstream_unreachable"]


async def test_budget_is_refunded_when_nothing_was_forwarded(
    env: GatewayEnv, tmp_path: Path
) -> None:
    """Key unreadable (503) or upstream refusing connections (502): no budget is spent."""
    token = await env.credential()
    headers = {"Authorization": f"Bearer {token}"}
    async with env.session() as session:

        async def post(route: str) -> int:
            async with session.post(
                f"{env.url}/{route}/v1/chat/completions", json=MESSAGE, headers=headers
            ) as response:
                await response.read()
                return response.status

        assert [await post("flaky") for _ in range(4)] == [503] * 4  # budget: 3 requests
        assert (await last_request(env))["reasons"] == ["key_unavailable"]
        assert [await post("down") for _ in range(3)] == [502] * 3  # budget: 2 requests
        (tmp_path / "flaky.key").write_text(env.upstream.key)  # the key source is back
        assert [await post("flaky") for _ in range(4)] == [200, 200, 200, 429]
    assert (await last_request(env))["reasons"] == ["budget_exhausted:requests"]


async def receive_a_cut_stream(env: GatewayEnv, path: str) -> None:
    """A streamed call whose status and first event arrive, and whose body is then cut.

    The agent's client must report an incomplete body (not hang, never see it complete).
    """
    token = await env.credential()
    async with (
        env.session() as session,
        streamed_chat(session, env, path, token) as response,
    ):
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: ")
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 5)


async def test_stream_stalling_beyond_the_idle_timeout_is_cut(
    tmp_path: Path, bao: IssuerVault
) -> None:
    """An upstream silent mid-stream: both connections closed, audited as a 504 timeout."""
    async with (
        local_upstream(upstream_key(bao)) as upstream,
        gateway_broker(tmp_path / "dev", bao, upstream, {"idle_timeout_seconds": 0.2}) as env,
    ):
        await receive_a_cut_stream(env, "/llm/v1/chat/stall")
        await asyncio.wait_for(upstream.dropped.wait(), 5)  # the upstream connection is closed
        record = await last_request(env)
    assert record["decision"] == "allow"
    assert record["reasons"] == ["upstream_idle_timeout"]
    assert record["gateway"]["status"] == 504
    assert record["gateway"]["upstream_status"] == 200
    assert record["gateway"]["bytes_out"] > 0


async def test_an_upstream_breaking_off_its_body_is_recorded_as_its_doing(
    tmp_path: Path, bao: IssuerVault
) -> None:
    """The upstream drops its connection mid-stream: recorded as its doing (502).

    The agent never sees a complete body; the record keeps the 200 it had received.
    """
    async with (
        local_upstream(upstream_key(bao)) as upstream,
        gateway_broker(tmp_path / "dev", bao, upstream) as env,
    ):
        await receive_a_cut_stream(env, "/llm/v1/chat/break")
        record = await last_request(env)
    assert record["decision"] == "allow"
    assert record["reasons"] == ["upstream_interrupted"]
    assert record["gateway"]["status"] == 502
    assert record["gateway"]["upstream_status"] == 200
    assert record["gateway"]["bytes_out"] > 0


async def test_an_agent_gone_mid_response_is_recorded_as_its_own_doing(env: GatewayEnv) -> None:
    """The agent hangs up while the response streams: 499 `agent_disconnected`.

    It was recorded as the stream's failure, as though the upstream had broken off. The
    upstream, still streaming, is cut too: nobody would read the rest.
    """
    token = await env.credential()
    before = len(env.records("gateway.request"))
    async with (
        env.session() as session,
        streamed_chat(session, env, "/llm/v1/chat/drip", token) as response,
    ):
        assert (await response.content.readline()).startswith(b"data: ")
        response.close()  # the agent hangs up with the stream still coming

    async def recorded() -> list[dict[str, Any]]:
        return env.records("gateway.request")[before:]

    records = await eventually(recorded, within=10)
    assert len(records) == 1
    assert records[0]["reasons"] == ["agent_disconnected"]
    assert records[0]["gateway"]["status"] == 499
    assert records[0]["gateway"]["upstream_status"] == 200
    await asyncio.wait_for(env.upstream.dropped.wait(), 5)  # the upstream connection is closed


async def test_an_agent_stalling_its_body_is_cut_and_recorded(
    tmp_path: Path, bao: IssuerVault
) -> None:
    """An agent that stops sending its body holds no handler past the idle timeout: 408."""
    async with (
        local_upstream(upstream_key(bao)) as upstream,
        gateway_broker(tmp_path / "dev", bao, upstream, {"idle_timeout_seconds": 0.2}) as env,
    ):
        token = await env.credential()
        # Streamed upstream as it comes (claude); read whole first, for the model (llm).
        for route, path in (("claude", "/v1/messages"), ("llm", "/v1/chat/completions")):
            release = asyncio.Event()

            async def body(release: asyncio.Event = release) -> AsyncIterator[bytes]:
                yield b'{"model": "gpt-4o-mini", "messages": ['
                await release.wait()  # silent well beyond the idle timeout
                yield b"]}"

            with contextlib.suppress(aiohttp.ClientError):
                async with (
                    env.session() as session,
                    session.post(
                        f"{env.url}/{route}{path}",
                        data=body(),
                        headers={"Authorization": f"Bearer {token}", "x-api-key": token},
                        timeout=aiohttp.ClientTimeout(total=5),
                    ) as response,
                ):
                    await response.read()
            release.set()
            record = await last_request(env)
            assert record["gateway"]["route"] == route
            assert record["gateway"]["status"] == 408
            assert record["reasons"] == ["agent_idle_timeout"]


def _payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


async def test_upstream_timeout_and_body_limit(tmp_path: Path, bao: IssuerVault) -> None:
    """A slow upstream: 504; a body over the limit on a model route: 413, nothing forwarded."""
    limits = {
        "connect_timeout_seconds": 0.5,
        "first_byte_timeout_seconds": 0.5,
        "max_body_bytes": 2048,
    }
    async with (
        local_upstream(upstream_key(bao)) as upstream,
        gateway_broker(tmp_path / "dev", bao, upstream, limits) as env,
    ):
        token = await env.credential()
        headers = {"Authorization": f"Bearer {token}"}
        async with env.session() as session:
            async with session.get(f"{env.url}/llm/v1/models/slow", headers=headers) as response:
                assert response.status == 504
            assert (await last_request(env))["reasons"] == ["upstream_timeout"]
            big = {**MESSAGE, "padding": "x" * 4096}
            before = len(upstream.seen)
            async with session.post(f"{env.url}{CHAT}", json=big, headers=headers) as response:
                assert response.status == 413
            assert len(upstream.seen) == before
            assert (await last_request(env))["reasons"] == ["payload_too_large"]


@pytest.mark.parametrize("route", ["named", "llm"])  # streamed upstream; read whole first
async def test_an_agent_gone_mid_body_is_recorded_as_its_own_doing(
    env: GatewayEnv, route: str
) -> None:
    """The agent's connection drops while its body is read: audited as the agent's doing.

    Streamed upstream, it was recorded as `upstream_unreachable`; read whole first, it
    escaped as a 500 with no record at all.
    """
    token = await env.credential()
    before = len(env.records("gateway.request"))

    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "gpt-4o-mini", "messages": ['
        await asyncio.sleep(0.2)  # the gateway is reading (or forwarding) the body by now
        raise ConnectionResetError("the agent went away")

    with contextlib.suppress(aiohttp.ClientError, ConnectionResetError):
        async with (
            env.session() as session,
            session.post(
                f"{env.url}/{route}/v1/chat/completions",
                data=body(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as response,
        ):
            await response.read()

    async def recorded() -> list[dict[str, Any]]:
        return env.records("gateway.request")[before:]

    records = await eventually(recorded, within=10)
    assert len(records) == 1
    assert records[0]["gateway"]["route"] == route
    assert records[0]["gateway"]["status"] == 499
    assert records[0]["reasons"] == ["agent_disconnected"]
    assert verify_files([env.broker.td.root / "audit.log"]).ok
