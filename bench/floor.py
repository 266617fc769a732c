"""The design's floor: an issuance's essential work alone, in a minimal aiohttp endpoint.

`python -m bench.floor --port P --dir D` serves `POST /v1/credentials` doing only what an
issuance cannot skip, each step done the cheapest way this stack allows. It is issue #10's
own "where the limit is" prototype, made a row of the same run so that the broker can be
compared with the floor of its design rather than with a figure from another day:

- TLS and HTTP exactly as the bare endpoint (`bench.bare`): the broker's TLS settings;
- the JWT-SVID bearer verified with PyJWT against the dev trust domain's JWT bundle once,
  then remembered by the token's SHA-256 until its `exp`;
- the body parsed, the policy a dict lookup (agent -> tools);
- the credential an ES256 JWT signed with `cryptography` under a header encoded once;
- an audit record (canonical JSON, hash-chained with SHA-256) and the credential's row,
  both riding one group commit: the writer thread appends the batch's lines, fsyncs, and
  inserts the batch's rows in one SQLite transaction (WAL, `synchronous=NORMAL`); the
  request waits for its batch, as the broker's do;
- the JSON answer.

What it leaves out is everything else the broker does per request: request ids, problem
details, body limits, metrics, the revocation read, user tokens, the context and the
policy engine, rate limits, budgets, per-step timings. Nothing of it is shared with the
`broker` package: the floor must not move when the broker does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bench.bare import serve, server_parser

__all__ = ["main"]

TRUST_DOMAIN = "example.org"
BROKER_ID = f"spiffe://{TRUST_DOMAIN}/broker"
TTL = 300
Row = tuple[str, str, str, int]  # a credential's row: jti, agent, tool, expiry
POLICY = {
    f"spiffe://{TRUST_DOMAIN}/agent/analytics": {"analytics_api": "https://analytics.example"}
}


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class Floor:
    """The endpoint's state: keys, the verification memo, the audit chain and its writer."""

    def __init__(self, directory: Path, workdir: Path) -> None:
        self.jwks = jwt.PyJWKSet.from_json((directory / "jwt" / "bundle.jwks").read_text())
        self.verified: dict[bytes, tuple[str, float]] = {}
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.header = _b64(_dumps({"alg": "ES256", "kid": "floor", "typ": "at+jwt"}))
        workdir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(workdir / "audit.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.db = sqlite3.connect(workdir / "state.db", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS credentials "
            "(jti TEXT PRIMARY KEY, agent TEXT, tool TEXT, expires_at INTEGER)"
        )
        self.head = "0" * 64
        self.queue: list[tuple[bytes, list[Row], asyncio.Future[None]]] = []
        self.wakeup = asyncio.Event()
        self.writer = ThreadPoolExecutor(1, "audit-writer")

    def caller(self, authorization: str) -> str | None:
        """The agent's SPIFFE ID from a verified (or remembered) JWT-SVID bearer."""
        if not authorization.startswith("Bearer "):
            return None
        token = authorization[7:]
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        known = self.verified.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        try:
            key = self.jwks[str(jwt.get_unverified_header(token).get("kid"))]
            claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=BROKER_ID)
        except (jwt.PyJWTError, KeyError):
            return None
        self.verified[digest] = (claims["sub"], float(claims["exp"]))
        return str(claims["sub"])

    def sign(self, claims: dict[str, object]) -> str:
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = self.header + b"." + payload
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return (signing_input + b"." + signature).decode()

    async def record(self, record: dict[str, object], rows: list[Row]) -> None:
        """Link the record into the chain; wait until it and its rows are durable."""
        record["prev_hash"] = self.head
        line = _dumps(record)
        self.head = hashlib.sha256(line).hexdigest()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((line[:-1] + b',"hash":"' + self.head.encode() + b'"}\n', rows, future))
        self.wakeup.set()
        await future

    async def run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.queue = self.queue, []
            if not batch:
                continue
            try:
                lines = b"".join(line for line, _, _ in batch)
                rows = [row for _, request_rows, _ in batch for row in request_rows]
                await loop.run_in_executor(self.writer, self._commit, lines, rows)
            except (OSError, sqlite3.Error) as exc:
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for _, _, future in batch:
                future.set_result(None)

    def _commit(self, lines: bytes, rows: list[Row]) -> None:
        os.write(self.fd, lines)
        os.fsync(self.fd)
        with self.db:
            self.db.executemany("INSERT INTO credentials VALUES (?, ?, ?, ?)", rows)


async def _issue(request: web.Request) -> web.Response:
    floor: Floor = request.app["floor"]
    agent = floor.caller(request.headers.get("Authorization", ""))
    if agent is None:
        return web.Response(status=401)
    body = json.loads(await request.read())
    allowed = POLICY.get(agent, {})
    tools = body.get("tools", [])
    if not tools or any(tool not in allowed for tool in tools):
        return web.Response(status=403)
    now = int(time.time())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + TTL))
    decision_id = secrets.token_urlsafe(16)
    credentials = []
    for tool in tools:
        jti = secrets.token_urlsafe(18)
        claims = {
            "iss": BROKER_ID,
            "sub": agent,
            "aud": allowed[tool],
            "client_id": agent,
            "scope": "read",
            "tool": tool,
            "iat": now,
            "nbf": now,
            "exp": now + TTL,
            "jti": jti,
        }
        credentials.append((tool, jti, floor.sign(claims)))
    record: dict[str, object] = {
        "ts": stamp,
        "event": "credential.issued",
        "decision_id": decision_id,
        "agent": agent,
        "credentials": [{"tool": tool, "credential_id": jti} for tool, jti, _ in credentials],
    }
    await floor.record(record, [(jti, agent, tool, now + TTL) for tool, jti, _ in credentials])
    answer = {
        "decision_id": decision_id,
        "expires_in": TTL,
        "credentials": [
            {
                "tool": tool,
                "type": "jwt",
                "token": token,
                "credential_id": jti,
                "expires_at": expires_at,
            }
            for tool, jti, token in credentials
        ],
    }
    data = json.dumps(answer, separators=(",", ":")).encode()
    return web.Response(status=201, body=data, content_type="application/json")


def main() -> None:
    parser = server_parser("bench.floor")
    parser.add_argument("--workdir", type=Path, required=True, help="its audit file and SQLite")
    args = parser.parse_args()

    async def start(app: web.Application) -> None:
        app["floor"] = Floor(args.dir, args.workdir)
        app["writer"] = asyncio.create_task(app["floor"].run_writer())

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/v1/credentials", _issue)
    serve(app, args)


if __name__ == "__main__":
    main()
