"""What every benchmark here reports: a ratio measured against its baseline in one run.

A `Row` holds one metric: the measured value, its baseline (same unit), their ratio, the
target the ratio should meet (``<=`` or ``>=``) and whether it did. `format_table` prints
rows as one Markdown table (so a run's output can be pasted into RESULTS.md), `write_json`
writes them with facts about the run. This module imports neither torch nor specgrow: the
process that measures other processes' peak memory must stay small.

>>> row = Row("a / b", 3.0, 2.0, "s", "<=", 2.0)
>>> row.ratio, row.met
(1.5, True)
>>> print(format_table([row, Row("c / d", None, None, "GB/s", ">=", 0.5, na="n/a (no CUDA)")]))
| metric | measured | baseline | ratio | target | met? |
|---|---|---|---|---|---|
| a / b | 3.00 s | 2.00 s | 1.50x | <= 2x | yes |
| c / d | n/a (no CUDA) | n/a (no CUDA) | n/a | >= 0.5x | n/a (no CUDA) |
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Row:
    """One ratio: ``measured / baseline``, to be ``op`` ``target``; ``na`` says why it was not measured."""

    metric: str
    measured: float | None
    baseline: float | None
    unit: str  # of measured and baseline: "s", "MB", "GB/s"
    op: str  # "<=" or ">="
    target: float
    detail: str = ""
    na: str | None = None

    def __post_init__(self):
        if self.op not in ("<=", ">="):
            raise ValueError(f"op must be '<=' or '>=', found {self.op!r}")

    @property
    def ratio(self) -> float | None:
        if self.na is not None or self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if ratio is None:
            return None
        return ratio <= self.target if self.op == "<=" else ratio >= self.target

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) >= 1 else f"{value:#.3g} {unit}"


def _target(row: Row) -> str:
    return f"{row.op} {row.target:g}x"


def format_table(rows: list[Row]) -> str:
    """``metric | measured | baseline | ratio | target | met?`` as a Markdown table."""
    lines = ["| metric | measured | baseline | ratio | target | met? |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row.na is not None:
            cells = [row.metric, row.na, row.na, "n/a", _target(row), row.na]
        else:
            ratio = row.ratio
            cells = [row.metric, _value(row.measured, row.unit), _value(row.baseline, row.unit),
                     "n/a" if ratio is None else f"{ratio:.2f}x", _target(row),
                     {True: "yes", False: "NO", None: "n/a"}[row.met]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_details(rows: list[Row]) -> str:
    """One line per row that has a detail (how it was measured, the raw numbers)."""
    return "\n".join(f"- {row.metric}: {row.detail}" for row in rows if row.detail)


def print_rows(rows: list[Row], file=None) -> None:
    print(format_table(rows), file=file or sys.stdout)
    details = format_details(rows)
    if details:
        print(details, file=file or sys.stdout)


def run_facts(argv: list[str] | None = None) -> dict:
    """When, where and how: put into every JSON result, and printed as a header."""
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *(argv if argv is not None else sys.argv)]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        facts["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    facts["versions"] = _versions()
    return facts


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("specgrow", "torch", "sympy", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json(path: str | Path, rows: list[Row], facts: dict, info: dict | None = None) -> dict:
    """Write ``{facts…, rows: [...], info: {...}}`` to ``path`` (``-``: stdout); returns the document."""
    doc = dict(facts)
    if hasattr(os, "getloadavg"):
        doc["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["rows"] = [row.as_dict() for row in rows]
    doc["info"] = info or {}
    text = json.dumps(doc, indent=2) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text)
    return doc


def interleaved(measures: dict, runs: int) -> dict[str, float]:
    """Median of ``runs`` calls of each measure, the measures taking turns.

    >>> interleaved({"a": lambda: 1.0, "b": lambda: 2.0}, runs=3)
    {'a': 1.0, 'b': 2.0}
    """
    samples: dict = {name: [] for name in measures}
    for _ in range(runs):
        for name, measure in measures.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass
class Collected:
    """What a benchmark module returns: its rows and numbers printed for information only."""

    rows: list[Row] = field(default_factory=list)
    info: dict = field(default_factory=dict)
