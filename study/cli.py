"""Command line: ``python -m study <command>``.

Every user mistake ends in one message on stderr and exit status 2, before
anything is written (no directory, no MLflow run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from study.backends import backend_names, load_backend
from study.core.errors import UserError, infrastructure_error
from study.interrupt import StudyInterrupted
from study.retry import RERUN_FAILED_FLAG, flag_help, flag_words

DEFAULT_CLUSTER = "local"  # the backend --cluster names when it is not given


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as UserError (exit 2, one line)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(message, source=f"{self.prog}")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="one training run, without Ray",
                       description="Train one run and write DIR/metrics.jsonl and DIR/final.json; "
                                   "resumes from DIR when run again.")
    p.add_argument("--preset", default="cpu", help="smoke | cpu | gpu | imagenet (default: cpu)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--out", required=True, help="run directory (created; resumed if it holds a run)")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from study.core.config import build_config, check_device, parse_sets
    from study.core.paths import writable_dir_problem

    cfg = build_config(args.preset, parse_sets(args.sets), source="--set")
    if not args.out.strip():
        raise UserError("give a directory for the run (it is created)", source="--out")
    out = Path(args.out).resolve()
    problem = writable_dir_problem(out)  # found now, not after the data loads
    if problem:
        raise UserError(problem, source=f"--out {args.out}")
    import torch

    from study.train.trainer import Trainer

    check_device(cfg.device, torch.cuda.device_count(), source="--set")

    # the trainer loads and checks the data before creating the directory
    trainer = Trainer(cfg, out)
    trainer.run()
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a study (all its cells) through Ray Tune",
                       description="Run every unfinished cell of a study file; finished cells are skipped.")
    p.add_argument("study_file", metavar="STUDY.yaml")
    p.add_argument("--preset", default="cpu", help="smoke | cpu | gpu | imagenet (default: cpu)")
    p.add_argument("--cluster", default=DEFAULT_CLUSTER, choices=backend_names())
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key in every cell (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and their resources, run nothing")
    p.add_argument(RERUN_FAILED_FLAG, action=argparse.BooleanOptionalAction, default=None, help=flag_help())
    a = p.add_argument_group("adaptive seeds")
    a.add_argument("--until-decided", action="store_true",
                   help="after the study's seeds, add seeds in batches to the levels of the hypotheses that are "
                        "still open, until decided (group-sequential rule) or a limit")
    a.add_argument("--max-seeds", type=int, default=None, metavar="N",
                   help="with --until-decided: at most N seeds per cell (default: the study file's max_seeds, else 20)")
    a.add_argument("--budget-hours", type=float, default=None, metavar="H",
                   help="with --until-decided: stop before a batch would pass H cell-hours trained by this study")
    g = p.add_argument_group("SLURM (with --cluster slurm)")
    g.add_argument("--slurm-config", help="cluster config file (YAML; see cluster/slurm.example.yaml)")
    for opt in ("nodes", "gpus-per-node", "cpus-per-task", "mem", "partition", "account", "qos", "time",
                "constraint"):
        g.add_argument(f"--{opt}", dest=f"slurm_{opt.replace('-', '_')}", default=None)
    g.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, passed through (repeatable)")
    g.add_argument("--wait", action="store_true", help="follow a submitted job and exit with the study's outcome "
                   "(a backend that runs the study in this command, as local, always does)")
    p.set_defaults(func=cmd_run)


def _slurm_options(args) -> dict:
    opts = {k[len("slurm_"):]: v for k, v in vars(args).items()
            if k.startswith("slurm_") and k not in ("slurm_config", "slurm_opt") and v is not None}
    from study.core.files import parse_scalar

    extra = {}
    for item in args.slurm_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got '{item}'", source="--slurm-opt")
        # the same YAML 1.2 rules as `extra:` in a cluster config file: `exclusive=true` is a flag,
        # `mail-type=END` and `requeue=yes` are strings
        extra[key] = parse_scalar(value, f"--slurm-opt {key}")
    return {"config_file": args.slurm_config, "overrides": opts, "extra": extra}


def _launch_words(args, options: dict) -> list[str]:
    """The backend words of this command as typed (none for the default backend, local)."""
    if args.cluster == DEFAULT_CLUSTER and not (options["config_file"] or options["overrides"] or options["extra"]):
        return []
    words = ["--cluster", args.cluster]
    if options["config_file"]:
        words += ["--slurm-config", str(options["config_file"])]
    for key, value in options["overrides"].items():
        words += ["--" + key.replace("_", "-"), str(value)]
    for key, value in options["extra"].items():
        words += ["--slurm-opt", f"{key}={value}"]
    return words + (["--wait"] if args.wait else [])


def cmd_run(args) -> int:
    """``run``: the whole command in the driver thread (study.interrupt.drive), so that SIGINT and
    SIGTERM stop it at a safe point, wherever it is (loading, a batch, a look of the adaptive loop)."""
    from study import interrupt

    return interrupt.drive(_run, args)


def _run(args) -> int:
    from study import interrupt

    code = _run_command(args)
    if code not in interrupt.EXIT_CODES.values():
        interrupt.check()  # a signal that came as the work ended still ends the command with its status
    return code


def _run_command(args) -> int:
    from study.core.config import parse_sets
    from study.runner import run_study

    if (args.max_seeds is not None or args.budget_hours is not None) and not args.until_decided:
        raise UserError("needs --until-decided", source="--max-seeds" if args.max_seeds is not None
                        else "--budget-hours")
    if args.until_decided:
        from study.adaptive import check_limits

        check_limits(args.max_seeds, args.budget_hours)
    options = _slurm_options(args)
    backend = load_backend(args.cluster, options)  # the CLI picks, the runner uses
    from study.resume import remember_launch

    # the command to resume runs on the same backend, with the same retry flag
    remember_launch(_launch_words(args, options) + flag_words(args.rerun_failed))
    if args.until_decided and not args.dry_run:
        from study.runner import run_until_decided

        return run_until_decided(args.study_file, preset=args.preset, backend=backend,
                            sets=parse_sets(args.sets, source="--set"), rerun_failed=args.rerun_failed,
                            max_seeds=args.max_seeds, budget_hours=args.budget_hours)

    if args.until_decided:  # a dry run: what the loop would refuse, refused now
        from study.adaptive import check_study, keep_plan, limits_for
        from study.studyfile import load_study

        study = load_study(args.study_file, args.preset, parse_sets(args.sets, source="--set"))
        limits = limits_for(study, args.max_seeds, None)
        check_study(study, limits.max_seeds, flag=limits.flag)
        from study.tracking import StudyTracker, store_exists, tracking_uri

        if store_exists(tracking_uri()):  # a plan begun with another limit: refused as the run would refuse it
            keep_plan(study, StudyTracker(study.name, create=False), limits)
    return run_study(args.study_file, backend=backend, preset=args.preset,
                     sets=parse_sets(args.sets, source="--set"), dry_run=args.dry_run,
                     rerun_failed=args.rerun_failed, wait=args.wait)


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="cells done / running / failed / missing of a study")
    p.add_argument("study_file", metavar="STUDY.yaml")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    from study.core.config import parse_sets
    from study.runner import study_status

    return study_status(args.study_file, preset=args.preset, sets=parse_sets(args.sets, source="--set"))


def _add_ui(sub) -> None:
    p = sub.add_parser("ui", help="print each study's link, then start the MLflow UI on 127.0.0.1",
                       description="Print one link per study in the store (its runs, in the UI's model-training "
                                   "view), then start `mlflow ui` over the store on 127.0.0.1.")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1: one person browsing; mlflow's own default is 4)")
    p.add_argument("--links-only", action="store_true", help="print the links, start nothing")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args) -> int:
    from study.provenance import study_link, ui_base
    from study.tracking import study_experiments, tracking_uri

    if not 0 < args.port < 65536:
        raise UserError(f"must be a port number 1-65535, got {args.port}", source="--port")
    if args.workers < 1:
        raise UserError(f"must be at least 1, got {args.workers}", source="--workers")
    from analysis.uri import shown_uri

    uri = tracking_uri()
    studies = study_experiments(uri)
    if not studies:
        print(f"no study in the store {shown_uri(uri)} yet (run one: make study-sampling)")
    for name, exp_id in studies:
        print(f"{name:12} {study_link(exp_id, ui_base(uri, args.port))}")
    sys.stdout.flush()
    if args.links_only:
        return 0
    mlflow = str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port),
                      "--workers", str(args.workers)])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m study", description="InterCLR study toolkit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_run(sub)
    _add_status(sub)
    _add_ui(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        parser = build_parser()  # lists the backends: a bad declaration in cluster/ is a UserError
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except StudyInterrupted as sig:  # stopped at a safe point where no run of this command was open
        print(f"interrupted ({sig.name}): no run was left open; run the same command again to go on",
              file=sys.stderr, flush=True)
        return sig.exit_code
    except Exception as err:
        from study.tracking import store_unreachable

        # a tracking server that went away: one message, not a traceback (and only a run stops a study)
        running = getattr(args, "command", "") == "run" and not getattr(args, "dry_run", False)
        down = store_unreachable(err, stopped=running) or infrastructure_error(err)
        if down is None:
            raise
        print(f"error: {down}", file=sys.stderr)
        return down.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
