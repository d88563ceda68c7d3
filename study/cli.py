"""Command line: ``python -m study <command>``.

Every user mistake ends in one message on stderr and exit status 2, before
anything is written (no directory, no MLflow run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.errors import UserError


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
    from study.config import build_config, parse_sets

    cfg = build_config(args.preset, parse_sets(args.sets), source="--set")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory", source=str(out))
    from study.trainer import Trainer

    # the trainer loads and checks the data before creating the directory
    trainer = Trainer(cfg, out)
    trainer.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m study", description="InterCLR study toolkit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
