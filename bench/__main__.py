"""``python -m bench [--quick] [--only a,b] [--skip a,b] [--out PATH]``: run the benchmarks.

Prints each benchmark's table as it finishes and writes a markdown report
(default ``bench/RESULTS.md`` for a full run; a ``--quick`` run, or one of
some benchmarks (``--only``, ``--skip``), writes one only when ``--out`` is
given, so it never overwrites the full results).
Exit status 1 when a correctness check fails (goals not met do not fail the
run: they are findings).
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler: no CUDA-probe error lines on a CPU machine

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from bench import cell, gpu, kmeans_bench, maintenance, peer, pipeline, scheduler, sequential, step
from bench.common import Section, machine_info, markdown_table
from study.core.paths import REPO_ROOT

# name -> run(quick, shared); in this order (maintenance reuses the step benchmark's results)
BENCHMARKS: dict[str, Callable[..., Section]] = {
    "step": step.run,
    "labels": maintenance.run,
    "kmeans": kmeans_bench.run,
    "pipeline": pipeline.run,
    "scheduler": scheduler.run,
    "gpu": gpu.run,
    "cell": cell.run,
    "peer": peer.run,
    "sequential": sequential.run,
}
DEFAULT_OUT = REPO_ROOT / "bench" / "RESULTS.md"


def _names(arg: Optional[str]) -> list[str]:
    if not arg:
        return []
    names = [n.strip() for n in arg.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        print(f"bench: unknown benchmark(s) {', '.join(bad)}; allowed: {', '.join(BENCHMARKS)}", file=sys.stderr)
        raise SystemExit(2)
    return names


def run_all(quick: bool, only: list[str], skip: list[str], echo: bool = True) -> tuple[list[Section], float]:
    torch.manual_seed(0)
    np.random.seed(0)
    shared: dict = {}
    sections = []
    start = time.perf_counter()
    for name, fn in BENCHMARKS.items():
        if (only and name not in only) or name in skip:
            continue
        if echo:
            print(f"[bench] {name} ...", flush=True)
        sec = fn(quick=quick, shared=shared)
        sections.append(sec)
        if echo:
            print(sec.text() + "\n", flush=True)
    return sections, time.perf_counter() - start


def report(sections: list[Section], total: float, quick: bool, load_before: tuple, load_after: tuple) -> str:
    info = machine_info()
    lines = [
        "# Benchmarks" + (" (quick: tiny sizes, not results)" if quick else ""),
        "",
        f"Written by `python -m bench{' --quick' if quick else ''}` (`make bench`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the whole run took {total:.0f} s. "
        "Fixed seeds; times are medians of interleaved repeats. Load average (1 min) before / after: "
        f"{load_before[0]:.2f} / {load_after[0]:.2f}.",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], [[k, v] for k, v in info.items()]),
        "",
        "## Summary",
        "",
        "Goals:",
        "",
    ]
    lines += [f"- {g.line()}" for s in sections for g in s.goals] or ["- (none run)"]
    checks = [c for s in sections for c in s.checks]
    lines += ["", f"Correctness checks: {sum(c.passed for c in checks)} of {len(checks)} pass"
              + ("" if all(c.passed for c in checks) else " (FAILURES below)"), ""]
    for s in sections:
        lines.append(s.markdown())
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the performance benchmarks.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every benchmark in seconds")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--skip", help="comma-separated benchmarks to leave out")
    parser.add_argument("--out", help="markdown report path (default: bench/RESULTS.md for a full run, none otherwise)")
    args = parser.parse_args(argv)
    only, skip = _names(args.only), _names(args.skip)
    load_before = os.getloadavg()
    sections, total = run_all(args.quick, only, skip)
    # only a full run replaces bench/RESULTS.md: a part of one (--only, --skip) would drop the other sections
    out = args.out or (None if args.quick or only or skip else str(DEFAULT_OUT))
    if out:
        Path(out).write_text(report(sections, total, args.quick, load_before, os.getloadavg()))
        print(f"[bench] wrote {out} ({total:.0f} s)")
    failed = [c for s in sections for c in s.checks if not c.passed]
    for c in failed:
        print(f"[bench] {c.line()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
