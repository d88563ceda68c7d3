"""python -m analysis [--study NAME ...] [--tracking-uri URI] [--out DIR]"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path



class Stopped(BaseException):
    """SIGINT or SIGTERM reached the analysis. Raised where the signal lands: the analysis writes whole
    files only (analysis.atomic), its store writes are single transactions that the exit which follows
    rolls back if one was open, and it rebuilds everything when run again, so stopping it anywhere loses
    nothing but its own time. (The study's driver, which goes on writing after a signal, never raises in
    its handlers: study.interrupt.)"""

    def __init__(self, signum: int):
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(argv)
    except Stopped as stop:
        print(f"analysis: stopped by {signal.Signals(stop.signum).name}; the files it wrote are whole; run it again "
              "to rebuild the rest", file=sys.stderr)
        return 128 + stop.signum
    except Exception as err:  # a full disk, a read-only folder: one line (the files it wrote are whole)
        from study.core.errors import infrastructure_error

        infra = infrastructure_error(err, then="then run it again (the files it wrote are whole)")
        if infra is None:
            raise
        print(f"analysis: {infra}", file=sys.stderr)
        return infra.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None = None) -> int:
    # imported here, after the stop handlers are in place (pandas and matplotlib take a second)
    from study.core.listing import experiment_holding_study, moved_study_text

    from .load import ContractError, StoreError, client_for, default_tracking_uri, list_studies
    from .pipeline import build_all, default_out_dir
    from .uri import shown_uri

    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Rebuild tables, figures and REPORT.md from the MLflow store (no training).")
    p.add_argument("--study", action="extend", nargs="+", default=None, metavar="NAME",
                   help="studies (experiments) to rebuild (--study a b, or --study a --study b); default: every study in the store "
                        "(REPORT.md also lists the paper's four studies, as not run when absent)")
    p.add_argument("--tracking-uri", default=None, help=f"MLflow store (default: {shown_uri(default_tracking_uri())})")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default_out_dir()})")
    p.add_argument("--no-log", action="store_true",
                   help="do not put the outputs and verdicts on the studies' parent runs in the store")
    args = p.parse_args(argv)
    from study.core.paths import writable_dir_problem

    problem = writable_dir_problem((args.out or default_out_dir()).resolve())
    if problem:
        p.error(f"--out {args.out or default_out_dir()}: {problem}")
    try:
        if args.study:
            # an absent study gets its "not run" section (a study not started yet: make study-X after a
            # refused file); a name close to one the store holds is a typo: refused, nothing written
            known = list_studies(args.tracking_uri)
            for name in args.study:
                if name not in known:
                    moved = experiment_holding_study(client_for(args.tracking_uri), name)
                    if moved is not None:
                        print(f"analysis: --study {name}: {moved_study_text(name, moved)}, or name it "
                              f"--study '{moved.name}'", file=sys.stderr)
                        return 2
                    close = difflib.get_close_matches(name, known, n=1)
                    if close:
                        print(f"analysis: --study {name}: no study of that name in the store; did you mean "
                              f"'{close[0]}'? (studies: {', '.join(known)})", file=sys.stderr)
                        return 2
                    print(f"analysis: no study '{name}' in the store (reported as not run; studies: "
                          f"{', '.join(known) or 'none'})", file=sys.stderr)
        paths = build_all(args.study, args.tracking_uri, args.out, log_to_store=not args.no_log)
    except (StoreError, ContractError) as exc:
        print(f"analysis: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    out = args.out or default_out_dir()
    print(f"analysis: wrote {len(paths)} files under {out}; report: {Path(out) / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
