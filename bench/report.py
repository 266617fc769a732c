"""The table: formatted once, printed to stdout and written into bench/README.md."""

from __future__ import annotations

import re
from pathlib import Path

from bench.model import Result, Results
from bench.targets import ratio

__all__ = ["README", "render", "write_readme"]

README = Path(__file__).with_name("README.md")
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

_HEADER = (
    "| row | load | result | p50 ms | p99 ms | x bare | x OpenBao | errors | checks "
    "| target | met |"
)
_RULE = "|---|---|---:|---:|---:|---:|---:|---|---|---|---|"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _errors(result: Result) -> str:
    if result.load is None:
        return "-"
    bad = result.load.unexpected
    if not bad:
        return "0"
    total = sum(bad.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items()))
    return f"**{total}** ({detail})"


def _checks(result: Result) -> str:
    if not result.checks:
        return "-"
    return "; ".join(
        f"{c.name} ok" if c.ok else f"**{c.name} FAILED**: {c.detail}" for c in result.checks
    )


def _targets(result: Result, results: Results) -> tuple[str, str]:
    if not result.targets:
        return "-", "-"
    texts, verdicts = [], []
    for target in result.targets:
        verdict = target.judge(results) if result.skipped is None else None
        texts.append(target.text)
        verdicts.append("n/a" if verdict is None else "met" if verdict else "**NOT met**")
    return "; ".join(texts), "; ".join(verdicts)


def _line(result: Result, results: Results) -> str:
    load = result.load if result.skipped is None else None
    if result.skipped is not None:
        figure, generator = result.skipped, "-"
    elif result.value is not None:
        figure, generator = f"{result.value:.0f} {result.unit}", "-"
    elif load is not None:
        figure, generator = f"{load.rps:,.0f} req/s", load.generator
    else:
        figure, generator = "-", "-"
    # Ratios are for closed-loop throughput lines; a baseline has none to itself.
    closed = load is not None and load.offered is None
    x_bare = ratio(results, result.key, result.bare_key) if closed else None
    x_bao = ratio(results, result.key, "openbao") if closed else None
    if result.key in {"bare", "bare-py"}:
        x_bare = x_bao = None
    if result.key == "openbao":
        x_bao = None
    target, met = _targets(result, results)
    cells = [
        result.label,
        generator,
        figure,
        _ms(load.p50_ms if load is not None else None),
        _ms(load.p99_ms if load is not None else None),
        _x(x_bare),
        _x(x_bao),
        _errors(result) if load is not None else "-",
        _checks(result),
        target,
        met,
    ]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def render(results: Results, header: str) -> str:
    """The whole report: a header line, the table, notes, checks, and text blocks."""
    table_rows = [r for r in results.values() if r.load or r.value is not None or r.skipped]
    lines = [header, "", _HEADER, _RULE]
    lines += [_line(r, results) for r in table_rows]
    notes = []
    for result in table_rows:
        details = list(result.notes)
        details += [f"{c.name}: {c.detail}" for c in result.checks]
        if result.load is not None and result.load.offered is None and result.skipped is None:
            details.append(
                f"{result.load.ok:,} x {result.load.expected} in {result.load.seconds:.1f} s"
            )
        if details:
            notes.append(
                f"- **{result.label}** ({result.wall_seconds:.0f} s): " + "; ".join(details)
            )
    if notes:
        lines += ["", *notes]
    texts = [r.text for r in results.values() if r.text]
    if texts:
        lines += ["", "```", *texts, "```"]
    return "\n".join(lines)


def write_readme(report: str, readme: Path = README) -> None:
    """Replace what lies between the bench markers of bench/README.md with `report`."""
    text = readme.read_text() if readme.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    readme.write_text(pattern.sub(lambda _m: f"{BEGIN}\n{report}\n{END}", text, count=1))
