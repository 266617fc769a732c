"""Driving wrk (HTTPS keep-alive, closed loop) and reading its figures back.

wrk is the load generator for every row whose caller authenticates with a header (the
JWT-SVID bearer, OpenBao's JWT login, the bare endpoint): it is written in C, so it drives
loopback HTTPS far above what a Python server answers. A generated Lua script sets the
request and counts responses per status in every thread; its `done` hook prints one JSON
line (marked `BENCHJSON`) with the statuses, the socket errors and the latency
percentiles, which is what the harness reads (not wrk's human summary).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkResult", "available", "lua_string", "run_wrk"]

_MARK = "BENCHJSON "

_SCRIPT = """
wrk.method = {method}
wrk.body = {body}
{headers}
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {{}}
end
function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end
function done(summary, latency, requests)
  local merged = {{}}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("statuses")) do
      merged[key] = (merged[key] or 0) + count
    end
  end
  local parts = {{}}
  for key, count in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', key, count))
  end
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests":%d,"duration_us":%d,"statuses":{{%s}},' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"timeout":%d}},' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def lua_string(text: str) -> str:
    """A Lua string literal for `text` (quotes, backslashes and control bytes escaped)."""
    out = []
    for char in text:
        code = ord(char)
        if char in {'"', "\\"}:
            out.append("\\" + char)
        elif code < 32 or code == 127:
            out.append(f"\\{code:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: statuses, socket errors, latency percentiles."""

    seconds: float
    statuses: dict[str, int]
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    command: str


def available() -> str | None:
    """Path of the wrk binary, if installed."""
    return shutil.which("wrk")


def run_wrk(
    url: str,
    *,
    script_dir: Path,
    method: str = "POST",
    body: str = "",
    headers: dict[str, str] | None = None,
    seconds: float,
    connections: int,
    threads: int,
    timeout_s: int = 10,
) -> WrkResult:
    """Run wrk once against `url` and parse its JSON line.

    Raises:
        RuntimeError: wrk failed or printed no result.
    """
    header_lines = "\n".join(
        f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in (headers or {}).items()
    )
    script = script_dir / "wrk-request.lua"
    script.write_text(
        _SCRIPT.format(
            method=lua_string(method), body=lua_string(body), headers=header_lines, mark=_MARK
        )
    )
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    data = json.loads(line[len(_MARK) :])
    return WrkResult(
        seconds=data["duration_us"] / 1e6,
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        errors={k: int(v) for k, v in data["errors"].items() if v},
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        command=f"wrk -t{threads} -c{max(connections, threads)}",
    )
