"""Shared pieces of the benchmarks: the machine's description, timers, result sections.

Every benchmark returns one :class:`Section` (a table, notes and the goals it
checks); ``python -m bench`` prints them and writes ``bench/RESULTS.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import torch


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, str]:
    """What RESULTS.md states about the machine the numbers come from."""
    flags = cpu_flags()
    simd = [f for f in ("avx512f", "avx2", "fma") if f in flags]
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                    break
    except OSError:
        pass
    info = {
        "CPU": cpu_model(),
        "SIMD": ", ".join(simd) or "n/a",
        "cores (usable)": str(usable_cores()),
        "memory": mem or "n/a",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch intra-op threads (default)": str(torch.get_num_threads()),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)",
    }
    for name in ("faiss", "sklearn", "ray", "lightly"):
        try:
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing optional package is just reported
            info[name] = "not installed"
    return info


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def time_call(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                      rewarm: tuple[str, ...] = (), per_round: Optional[dict[str, int]] = None
                      ) -> dict[str, list[float]]:
    """Time several callables in alternating order, to cancel slow drift.

    Round ``r`` runs the callables in their given order when ``r`` is even and
    reversed when odd, so each one is as often first as last. ``warmup``
    untimed rounds come first.

    ``rewarm``: names whose timed calls, when another callable ran just before,
    follow one untimed call of their own: a small step timed right after a large
    one (a 1.28M bank streamed through the caches) pays for what the large one
    evicted, and the baseline would then depend on its neighbour. ``per_round``:
    name -> timed calls per round (default 1), so that a cheap baseline beside a
    slow step has enough samples in the few rounds the slow one affords.

    Returns:
        name -> list of wall times (seconds): ``repeats * per_round[name]`` each.
    """
    names = list(fns)
    per_round = per_round or {}
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in rewarm:
                fns[name]()
            for _ in range(per_round.get(name, 1)):
                out[name].append(time_call(fns[name]))
    return out


def visit_times(rows: dict[Hashable, Callable[[], tuple[dict[str, Callable[[], Any]], dict]]], passes: int = 2
                ) -> dict[Hashable, dict[str, list[float]]]:
    """Time every row in ``passes`` visits, the rows' order reversed on every other pass.

    A row is a factory called at each visit: it builds what the row times (fresh trainers, so
    no row's state is held while another row runs) and returns ``(fns, kwargs)`` for
    :func:`interleaved_times`; the samples of a row's visits are pooled. Why: the machine's speed
    drifts over a run (measured here: the median of 9 consecutive MoCo v2 steps moves by 15 %
    within two quiet minutes), so a row timed in one stretch gets that stretch's speed. With an
    even number of passes in mirrored order every row's samples sit around the run's middle on
    average (a linear drift cancels; an odd number leaves the first rows early), and a burst of a
    few seconds reaches one visit of a row, two for the row at a turn of the passes (visited last
    in one pass and first in the next). Ratios stay contemporaneous: within a visit the callables
    alternate as in :func:`interleaved_times`, and the order of ``fns`` is reversed on every other
    pass, so that in a visit of one round neither callable always runs second.

    Returns:
        row -> name -> wall times (seconds), the visits' samples in order.
    """
    if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
        raise ValueError(f"passes must be an integer of at least 1, got {passes!r}")
    out: dict[Hashable, dict[str, list[float]]] = {key: {} for key in rows}
    keys = list(rows)
    for p in range(passes):
        for key in (keys if p % 2 == 0 else keys[::-1]):
            fns, kwargs = rows[key]()
            if p % 2:
                fns = dict(reversed(list(fns.items())))
            for name, times in interleaved_times(fns, **kwargs).items():
                out[key].setdefault(name, []).extend(times)
            del fns  # the row's trainers go before the next row's are built
    return out


def repeat_times(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    return [time_call(fn) for _ in range(repeats)]


class set_threads:
    """Context manager: torch intra-op threads set to ``n``, restored on exit."""

    def __init__(self, n: int):
        self.n = n
        self.old = torch.get_num_threads()

    def __enter__(self) -> "set_threads":
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.old)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class Goal:
    """One goal of the issue: ``value`` compared with ``target`` (``<=`` unless ``higher_is_better``)."""

    name: str
    value: Optional[float]
    target: float
    higher_is_better: bool = False
    note: str = ""
    condition: Optional[bool] = None  # a second requirement of the goal (False: not met whatever the value)

    @property
    def met(self) -> Optional[bool]:
        if self.value is None or self.value != self.value:
            return None
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return ok and self.condition is not False

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        state = {True: "MET", False: "NOT MET", None: "not measured"}[self.met]
        value = "n/a" if self.value is None else fmt(self.value)
        extra = f" ({self.note})" if self.note else ""
        return f"{state}: {self.name}: {value} (goal {op} {fmt(self.target)}){extra}"


@dataclass
class Check:
    """A correctness check run alongside a benchmark (same outputs as the reference path)."""

    name: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}: {self.name}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Section:
    """One benchmark's results: tables, notes, goals and checks."""

    key: str
    title: str
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)  # (caption, header, rows)
    notes: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers, for the tests and other benchmarks

    def table(self, caption: str, header: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((caption, header, rows))

    def markdown(self) -> str:
        parts = [f"## {self.title}", ""]
        for caption, header, rows in self.tables:
            if caption:
                parts += [caption, ""]
            parts.append(markdown_table(header, rows))
            parts.append("")
        if self.goals:
            parts += ["Goals:", ""] + [f"- {g.line()}" for g in self.goals] + [""]
        if self.checks:
            parts += ["Correctness checks:", ""] + [f"- {c.line()}" for c in self.checks] + [""]
        if self.notes:
            parts += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        parts.append(f"_(this benchmark ran in {self.seconds:.0f} s)_")
        parts.append("")
        return "\n".join(parts)

    def text(self) -> str:
        """Plain text for the terminal."""
        parts = [f"== {self.title} ({self.seconds:.0f} s)"]
        for caption, header, rows in self.tables:
            if caption:
                parts.append(caption)
            parts.append(text_table(header, rows))
        parts += [g.line() for g in self.goals]
        parts += [c.line() for c in self.checks]
        return "\n".join(parts)


def fmt(v: Any) -> str:
    """Numbers with 3-4 significant digits; everything else as str."""
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 10:
            return f"{v:.2f}"
        if a >= 1:
            return f"{v:.3f}"
        if a >= 0.001:
            return f"{v:.4f}"
        return f"{v:.2e}"
    return str(v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    out = []
    for j, row in enumerate(cells):
        out.append("  ".join(str(c).rjust(widths[i]) if j else str(c).ljust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
