"""SLURM options: the cluster config file and the flags, checked and mapped to sbatch.

The options of the ONE job that runs a study come from a cluster config file
(``--slurm-config`` or ``$STUDY_SLURM_CONFIG``; see ``cluster/slurm.example.yaml``),
the flags that override it (``--nodes``, ``--time``, ...) and the pass-through
sbatch options (``extra:`` in the file, ``--slurm-opt KEY=VALUE``).
:func:`check_options` validates them, :func:`resolve_for_study` fills the
defaults that depend on the study, :func:`executor_parameters` maps them to
submitit's SlurmExecutor (a pure mapping) and :func:`describe_submission` is
what ``--dry-run`` prints.

Nothing here imports submitit or ray, and nothing asks the cluster anything:
parsing a study file and its options stays free of SLURM.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from study.config import did_you_mean
from study.errors import UserError
from study.tracking import REPO_ROOT

# ---------------------------------------------------------------- options
# key -> (kind, default, help). The cluster config file may hold these keys and `extra`;
# the command line overrides the first nine (--nodes, --gpus-per-node, ...).
OPTION_KEYS: dict[str, tuple[str, Any, str]] = {
    "nodes": ("int>=1", 1, "SLURM nodes; one Ray node each (node 0: head and Tune driver)"),
    "gpus_per_node": ("int>=0", 0, "GPUs per node (sbatch --gpus-per-node; 0: none asked)"),
    "cpus_per_task": ("int>=1", None, "CPUs per node given to Ray (default: max(2, CPUs of one cell))"),
    "mem": ("mem", None, "memory per node as sbatch --mem: 16G, 4000M, 0 = all (default: the cluster's)"),
    "partition": ("str", None, "sbatch --partition"),
    "account": ("str", None, "sbatch --account"),
    "qos": ("str", None, "sbatch --qos"),
    "time": ("time", 60, "time limit: minutes, or [D-]HH:MM[:SS]"),
    "constraint": ("str", None, "sbatch --constraint"),
    "setup": ("lines", [], "shell lines run in the job before Python starts (modules, environments)"),
    "signal_delay_s": ("int>=0", 90, "seconds before the time limit at which the job checkpoints and requeues"),
    "max_requeues": ("int>=0", 3, "how many time-outs the job may requeue itself after"),
    "tasks_per_node": ("int>=1", 1, "Ray nodes per SLURM node (1 on a real cluster; 2 exercises the join path "
                                    "on one machine)"),
    "extra": ("extra", {}, "any other sbatch option, passed through (KEY: VALUE; true = a bare flag)"),
}
# sbatch options that have a key of their own (or that submitit manages): not allowed in `extra`
_MANAGED = {
    "nodes": "nodes", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task", "mem": "mem",
    "partition": "partition", "account": "account", "qos": "qos", "time": "time", "constraint": "constraint",
    "ntasks-per-node": "tasks_per_node", "signal": "signal_delay_s", "output": None, "error": None,
    "open-mode": None, "job-name": None, "array": None, "wckey": None,
}
_TIME_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?P<rest>\d+(?::\d+){0,2})$")
_MEM_RE = re.compile(r"^\d+([KMGT]B?)?$", re.IGNORECASE)
_EXTRA_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def config_file_of(options: dict) -> Path | None:
    """The cluster config file: --slurm-config, else $STUDY_SLURM_CONFIG, else none (built-in defaults)."""
    name = options.get("config_file") or os.environ.get("STUDY_SLURM_CONFIG")
    return Path(name).expanduser().resolve() if name else None


def check_options(options: dict) -> dict:
    """Validate the SLURM options (config file, overrides, pass-through) and return them resolved.

    ``options`` is what the command line parsed: ``{"config_file", "overrides", "extra"}``.
    Every problem is one :class:`UserError` naming the file or flag and the key. Imports
    neither submitit nor ray and does not contact the cluster.
    """
    path = config_file_of(options)
    values: dict[str, Any] = {k: spec[1] for k, spec in OPTION_KEYS.items()}
    values["setup"], values["extra"] = [], {}
    if path is not None:
        for key, value in _read_config(path).items():
            values[key] = _coerce(key, value, source=str(path), from_cli=False)
    for key, value in (options.get("overrides") or {}).items():
        if key not in OPTION_KEYS or key in ("extra", "setup"):
            raise UserError(f"unknown SLURM option{did_you_mean(key, tuple(OPTION_KEYS))}", source="--" + key)
        values[key] = _coerce(key, value, source="--" + key.replace("_", "-"), from_cli=True)
    extra = dict(values["extra"])
    extra.update(_coerce("extra", dict(options.get("extra") or {}), source="--slurm-opt", from_cli=True))
    values["extra"] = extra
    values["config_file"] = str(path) if path else None
    return values


def _read_config(path: Path) -> dict:
    from study.files import read_yaml

    src = str(path)
    raw = read_yaml(path, "cluster config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping of keys, got {type(raw).__name__}", source=src)
    for key in raw:
        if key not in OPTION_KEYS:
            raise UserError(f"unknown key{did_you_mean(str(key), tuple(OPTION_KEYS))} "
                            f"(allowed: {', '.join(OPTION_KEYS)})", source=src, key=str(key))
    return raw


def _coerce(key: str, value: Any, *, source: str, from_cli: bool) -> Any:
    """One option's value, checked and converted; ``from_cli`` values are strings."""
    kind = OPTION_KEYS[key][0]
    where = {"source": source} if from_cli else {"source": source, "key": key}
    if value is None:
        if OPTION_KEYS[key][1] is not None:
            raise UserError(f"needs a value ({OPTION_KEYS[key][2]})", **where)
        return None
    if kind.startswith("int"):
        low = int(kind[-1])
        if from_cli and isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"expected a whole number >= {low}, got {value!r}", **where)
        if value < low:
            raise UserError(f"must be >= {low}, got {value}", **where)
        return value
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise UserError(f"expected a string, got {value!r}", **where)
        value = str(value).strip()
        if not value or any(c.isspace() for c in value):
            raise UserError(f"expected a name without spaces, got {value!r}", **where)
        return value
    if kind == "mem":
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or not _MEM_RE.match(text):
            raise UserError(f"expected memory as sbatch --mem takes it (16G, 4000M, 0), got {value!r}", **where)
        return text.upper()
    if kind == "time":
        return parse_time_minutes(value, where)
    if kind == "lines":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise UserError(f"expected a list of shell lines, got {value!r}", **where)
        return list(value)
    if kind == "extra":
        return _check_extra(value, where)
    raise AssertionError(kind)  # pragma: no cover - every kind is handled above


def parse_time_minutes(value: Any, where: dict | None = None) -> int:
    """A SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    where = where or {"source": "time"}
    bad = UserError(f"expected minutes or [D-]HH:MM[:SS], got {value!r}", **where)
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        minutes = value
    else:
        m = _TIME_RE.match(str(value).strip())
        if not m:
            raise bad
        parts = [int(p) for p in m.group("rest").split(":")]
        days = int(m.group("d") or 0)
        with_hours = m.group("d") is not None or len(parts) == 3
        if m.group("d") is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
            h, mi, s = parts + [0] * (3 - len(parts))
        elif len(parts) == 3:  # HH:MM:SS
            h, mi, s = parts
        else:  # MM or MM:SS
            h, mi, s = 0, parts[0], parts[1] if len(parts) == 2 else 0
        if s > 59 or (with_hours and mi > 59):
            raise bad
        minutes = days * 1440 + h * 60 + mi + math.ceil(s / 60)
    if minutes < 1:
        raise UserError(f"the time limit must be at least 1 minute, got {value!r}", **where)
    return minutes


def _check_extra(value: Any, where: dict) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"expected a mapping of sbatch options, got {value!r}", **where)
    out = {}
    for key, v in value.items():
        key = str(key)
        flag = key.lstrip("-").replace("_", "-")
        if not _EXTRA_KEY_RE.match(flag):
            raise UserError(f"'{key}' is not an sbatch option name", **where)
        if flag in _MANAGED:
            own = _MANAGED[flag]
            hint = f"; use '{own}' (--{own.replace('_', '-')})" if own else " (set by submitit)"
            raise UserError(f"'{key}' cannot be passed through{hint}", **where)
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            v = v.strip().lower() == "true"
        if not isinstance(v, (str, int, float, bool)):
            raise UserError(f"'{key}': expected a scalar value, got {v!r}", **where)
        out[flag] = v
    return out


def resolve_for_study(values: dict, study) -> dict:
    """Fill the defaults that depend on the study and check that one cell fits on a node."""
    values = dict(values)
    per_cell_cpus = study.resources.cpus
    if values["cpus_per_task"] is None:
        values["cpus_per_task"] = max(2, per_cell_cpus)
    if per_cell_cpus > values["cpus_per_task"]:
        raise UserError(f"a cell of '{study.name}' asks {per_cell_cpus} CPUs but a node gives Ray only "
                        f"{values['cpus_per_task']}; raise cpus_per_task or lower the study's "
                        f"presets.{study.preset}.resources.cpus", source="--cpus-per-task")
    gpus_per_task = values["gpus_per_node"] / values["tasks_per_node"]
    if study.resources.gpus > gpus_per_task:
        raise UserError(f"a cell of '{study.name}' asks {study.resources.gpus:g} GPU but a Ray node has "
                        f"{gpus_per_task:g}; raise gpus_per_node", source="--gpus-per-node")
    return values


def executor_parameters(values: dict, study_name: str) -> dict:
    """submitit SlurmExecutor parameters for the resolved options (a pure mapping)."""
    params: dict[str, Any] = {
        "job_name": f"study-{study_name}",
        "nodes": values["nodes"],
        "ntasks_per_node": values["tasks_per_node"],
        "cpus_per_task": values["cpus_per_task"],
        "time": values["time"],
        "signal_delay_s": values["signal_delay_s"],
        "stderr_to_stdout": True,
        "setup": list(values["setup"]),
    }
    if values["gpus_per_node"]:
        params["gpus_per_node"] = values["gpus_per_node"]
    for key in ("partition", "account", "qos", "constraint"):
        if values.get(key):
            params[key] = values[key]
    additional = {k: v for k, v in values["extra"].items() if v is not False}  # false: a flag switched off
    if values.get("mem"):
        # straight to sbatch: submitit's own `mem` expects gigabytes as a number
        additional["mem"] = values["mem"]
    if additional:
        params["additional_parameters"] = additional
    return params


def describe_submission(study, options: dict) -> str:
    """What --dry-run shows for --cluster slurm: the job's resolved resources (nothing submitted)."""
    values = resolve_for_study(check_options(options), study)
    params = executor_parameters(values, study.name)
    lines = [f"SLURM job (config file: {values['config_file'] or 'none, built-in defaults'}):"]
    lines += [f"  {k}: {v}" for k, v in params.items()]
    lines.append(f"  log folder: {slurm_log_root() / study.name}/<jobid>/")
    return "\n".join(lines)


def slurm_log_root() -> Path:
    """Where submitit's folders go: <repo>/slurm_logs (``STUDY_SLURM_LOGS`` overrides)."""
    return Path(os.environ.get("STUDY_SLURM_LOGS") or (REPO_ROOT / "slurm_logs")).resolve()
