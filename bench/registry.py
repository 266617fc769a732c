"""The rows of the table, in the order they run: the extension point.

A row is a function `(bench: Bench) -> list[Result]`, registered with `@row(key, title)` in
a module of bench/rows/ (and that module imported in bench/rows/__init__.py). It starts
what it needs with the `Bench` helpers (which stop it again), measures, and returns one or
more `Result`s with their checks and targets. `--only KEY` runs the rows with that key.

Example (the gateway row that is still to come):

    @row("gateway", "gateway vs direct upstream, added latency at 500 req/s")
    def gateway(bench: Bench) -> list[Result]:
        ...  # start an upstream and a broker with a route, bench.clients(mode="open", rate=500)
        return [Result("gateway", "...", load=load, targets=[...])]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.harness import Bench
    from bench.model import Result

__all__ = ["ROWS", "Row", "row"]

RowFunction = Callable[["Bench"], "list[Result]"]


@dataclass(frozen=True, slots=True)
class Row:
    """A registered row."""

    key: str
    title: str
    run: RowFunction


ROWS: dict[str, Row] = {}


def row(key: str, title: str) -> Callable[[RowFunction], RowFunction]:
    """Register a row function under `key` (run in registration order)."""

    def register(fn: RowFunction) -> RowFunction:
        if key in ROWS:
            raise ValueError(f"row {key!r} registered twice")
        ROWS[key] = Row(key, title, fn)
        return fn

    return register
