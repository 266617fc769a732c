"""What a row measures (`Load`), what it reports (`Result`), and how it is judged (`Target`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Check", "Load", "Result", "Results", "Target", "percentile"]


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass
class Load:
    """One measured load: what the generator saw inside the measured window.

    Attributes:
        generator: How the load was made (`wrk -t1 -c32`, `py 2x16 mTLS`, ...).
        seconds: Length of the measured window.
        expected: The status every response should have.
        statuses: Responses per status inside the window.
        errors: Socket errors and unanswered requests inside the window.
        seen: Every response per status, warm-up included (for the audit check).
        p50_ms: Median latency of the window's responses.
        p99_ms: 99th percentile.
        offered: Open loop: the scheduled rate (requests per second).
        late_max_ms: Open loop: the scheduler's worst lag behind its schedule.
        completed: Answers that arrived inside the window, whenever sent.
    """

    generator: str
    seconds: float
    expected: int
    statuses: dict[str, int]
    errors: dict[str, int]
    seen: dict[str, int]
    p50_ms: float | None
    p99_ms: float | None
    offered: float | None = None
    late_max_ms: float | None = None
    completed: int = 0

    @property
    def ok(self) -> int:
        """Responses with the expected status in the window."""
        return self.statuses.get(str(self.expected), 0)

    @property
    def rps(self) -> float:
        """Closed loop: expected responses per second in the window.

        Open loop: the achieved rate, answers that arrived per second in the window (the
        window's requests all count in `statuses`, however late, so their number is the
        offered rate whatever the server did).
        """
        if self.seconds <= 0:
            return 0.0
        if self.offered is not None:
            return self.completed / self.seconds
        return self.ok / self.seconds

    @property
    def unexpected(self) -> dict[str, int]:
        """Everything that was not the expected status: other statuses and socket errors."""
        out = {k: v for k, v in self.statuses.items() if k != str(self.expected) and v}
        out.update({k: v for k, v in self.errors.items() if v})
        return out

    def seen_status(self, status: int) -> int:
        """Responses with `status` over the whole run, warm-up included."""
        return self.seen.get(str(status), 0)


@dataclass(frozen=True, slots=True)
class Check:
    """A correctness check of a row (e.g. "nothing lost" in the audit log)."""

    name: str
    ok: bool
    detail: str


Results = dict[str, "Result"]


@dataclass(frozen=True, slots=True)
class Target:
    """A target from the issue, judged once every row of the run is in.

    `judge` returns True (met), False (not met) or None (cannot tell: a baseline row was
    not run or failed).
    """

    text: str
    judge: Callable[[Results], bool | None]


@dataclass
class Result:
    """One line of the table.

    Attributes:
        key: Stable id (`--only` uses row keys; targets refer to result keys).
        label: What the line measures.
        load: The measured load, for throughput and latency lines.
        value: A single figure instead of a load (e.g. RSS in MB), with `unit`.
        unit: Unit of `value`.
        bare_key: Which result is this line's "bare" baseline (same generator).
        checks: Correctness checks.
        targets: Targets from the issue.
        notes: Printed under the table.
        skipped: Why the line has no figure (e.g. "n/a (no --workers)").
        text: A free-form block printed after the table (micro-benchmarks).
        wall_seconds: How long the row took, start-up included.
    """

    key: str
    label: str
    load: Load | None = None
    value: float | None = None
    unit: str = ""
    bare_key: str = "bare"
    checks: list[Check] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    text: str | None = None
    wall_seconds: float = 0.0

    @property
    def rps(self) -> float | None:
        """Throughput of the expected status, if this line measured a load."""
        if self.skipped is not None or self.load is None:
            return None
        return self.load.rps
