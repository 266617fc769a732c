"""The policy-decision and JWT-mint micro-benchmark (bench/decision.py), in a subprocess.

It is the one part of the bench that imports broker internals (it times the engine and
the issuer in-process). The internals are being rewritten, so it runs in its own process
and a failure there is reported, not fatal.
"""

from __future__ import annotations

import subprocess
import sys

from bench.harness import Bench
from bench.model import Result
from bench.registry import row


@row("decision", "micro-benchmark: policy decision at 10 vs 10,000 agents, JWT mint")
def decision(bench: Bench) -> list[Result]:
    # A quarter of the standalone calls keeps the medians steady and the run short.
    argv = [
        sys.executable,
        "-m",
        "bench.decision",
        "--scale",
        "0.05" if bench.options.quick else "0.25",
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return [Result("decision", "micro-benchmark", text="decision micro-benchmark: timed out")]
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        text = f"decision micro-benchmark failed (internals changed?): {last}"
    else:
        text = out.stdout.rstrip()
    return [Result("decision", "micro-benchmark", text=text)]
