"""Rows 1 and 2: the ceiling (bare aiohttp HTTPS) and the incumbent (OpenBao JWT login)."""

from __future__ import annotations

import json

from bench.bare import BODY
from bench.harness import Bench
from bench.model import Result
from bench.openbao import ROLE, openbao
from bench.registry import row
from bench.rows.common import ISSUE_BODY, JSON


@row("bare", "bare aiohttp HTTPS endpoint, fixed 201 (the ceiling)")
def bare(bench: Bench) -> list[Result]:
    with bench.bare() as (url, _):
        load = bench.wrk(f"{url}/v1/credentials", body=ISSUE_BODY, headers=JSON, expected=201)
    return [
        Result(
            "bare",
            "bare aiohttp HTTPS, fixed 201 (ceiling)",
            load=load,
            notes=[f"{len(BODY)}-byte JSON body, the broker's TLS settings and certificate"],
        )
    ]


@row("openbao", "OpenBao JWT login -> 5-minute token")
def openbao_login(bench: Bench) -> list[Result]:
    token = bench.domain.jwt_svid("analytics")
    with openbao(
        bench.workdir,
        jwks_file=bench.domain.jwks,
        audience=bench.domain.broker_id,
        probe_jwt=token,
    ) as bao:
        load = bench.wrk(
            f"{bao.url}/v1/auth/jwt/login",
            body=json.dumps({"role": ROLE, "jwt": token}),
            headers=JSON,
            expected=200,
        )
    return [
        Result(
            "openbao",
            "OpenBao JWT login -> 5-min token",
            load=load,
            notes=["OpenBao dev mode: in-memory storage, no audit device"],
        )
    ]
