"""A load generator: N keep-alive mTLS connections POSTing credential requests for D seconds.

Run as its own process (`python -m bench.load ...`) so that it does not share the
broker's interpreter. Prints one JSON line: requests, errors, rate, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time

import aiohttp


async def run(args: argparse.Namespace) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    body = json.dumps({"tools": [args.tool]}).encode()
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(ssl=ctx, limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + args.warmup + args.seconds
        measuring_from = time.perf_counter() + args.warmup

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < deadline:
                async with session.post(
                    args.url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    if now >= measuring_from:
                        if resp.status == 201:
                            latencies.append(time.perf_counter() - now)
                        else:
                            errors += 1

        await asyncio.gather(*(worker() for _ in range(args.connections)))
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "errors": errors,
        "rps": count / args.seconds,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(count * 0.99) - 1] * 1000 if count >= 100 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--tool", default="analytics_api")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
