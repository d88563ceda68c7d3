"""SLURM options: the cluster config file and the flags, checked and mapped to sbatch.

The options of the ONE job that runs a study come from a cluster config file
(``--slurm-config`` or ``$STUDY_SLURM_CONFIG``; see ``cluster/slurm.example.yaml``),
the flags that override it (``--nodes``, ``--time``, ...) and the pass-through
sbatch options (``extra:`` in the file, ``--slurm-opt KEY=VALUE``).

:class:`SlurmOptions` is their schema, in the toolkit's one schema language (a
strict pydantic model, like the run config of :mod:`study.core.config`): unknown
keys are errors with a "did you mean", every value is checked for its kind and
range, and each option's help text is its field's ``description``. Values
from the command line are strings and are converted (``"45"``, ``"5:30"``,
``"16G"``); in a YAML file a number where a name belongs (``account: 0123``,
which YAML 1.2 reads as the number 123) is an error that says to quote it.
:func:`check_options` turns every problem into ONE :class:`UserError` naming
the file and the key, or the flag.

:func:`resolve_for_study` fills the defaults that depend on the study,
:func:`executor_parameters` maps the options to submitit's SlurmExecutor (a
pure mapping) and :func:`describe_submission` is what ``--dry-run`` prints.
Nothing here imports submitit or ray, and nothing asks the cluster anything:
parsing a study file and its options stays free of SLURM.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from study.core.config import did_you_mean, pydantic_message
from study.core.errors import UserError
from study.core.paths import REPO_ROOT

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


class SlurmOptions(BaseModel):
    """The keys of a cluster config file; the command line overrides all but ``setup`` and ``extra``.

    Validate with ``context={"cli": True}`` for values from the command line (strings: a
    whole number given as digits is converted). The ``before`` validators below check each
    kind of value and say what is allowed; the declared types and bounds hold what they return.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    nodes: int = Field(1, ge=1, description="SLURM nodes; one Ray node each (node 0: head and Tune driver)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (sbatch --gpus-per-node; 0: none asked)")
    cpus_per_task: Optional[int] = Field(None, ge=1,
                                         description="CPUs per node given to Ray (default: max(2, CPUs of one cell))")
    mem: Optional[str] = Field(None, description="memory per node as sbatch --mem: 16G, 4000M, 0 = all "
                                                 "(default: the cluster's)")
    partition: Optional[str] = Field(None, description="sbatch --partition")
    account: Optional[str] = Field(None, description="sbatch --account")
    qos: Optional[str] = Field(None, description="sbatch --qos")
    time: int = Field(60, ge=1, description="time limit: minutes, or [D-]HH:MM[:SS]")
    constraint: Optional[str] = Field(None, description="sbatch --constraint")
    setup: list[str] = Field(default_factory=list,
                             description="shell lines run in the job before Python starts (modules, environments)")
    signal_delay_s: int = Field(90, ge=0, description="seconds before the time limit at which the job checkpoints "
                                                      "and requeues")
    max_requeues: int = Field(3, ge=0, description="how many time-outs the job may requeue itself after")
    tasks_per_node: int = Field(1, ge=1, description="Ray nodes per SLURM node (1 on a real cluster; 2 exercises "
                                                     "the join path on one machine)")
    extra: dict[str, Union[bool, int, float, str]] = Field(
        default_factory=dict, description="any other sbatch option, passed through (KEY: VALUE; true = a bare flag)")

    @field_validator("nodes", "gpus_per_node", "cpus_per_task", "signal_delay_s", "max_requeues", "tasks_per_node",
                     mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return _no_value(info)
        low = next(m.ge for m in cls.model_fields[info.field_name].metadata if hasattr(m, "ge"))
        if (info.context or {}).get("cli") and isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"expected a whole number >= {low}")
        return value

    @field_validator("partition", "account", "qos", "constraint", mode="before")
    @classmethod
    def _name(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return _no_value(info)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML 1.2 reads `account: 0123` as the number 123: the name as written is lost
            raise ValueError(f"a number where a name belongs: YAML reads unquoted digits as a number (0123 as "
                             f"123); put the name in quotes ({info.field_name}: \"0123\")")
        if not isinstance(value, str):
            raise ValueError("expected a string")
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError("expected a name without spaces")
        return value

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return _no_value(info)
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or not _MEM_RE.match(text):
            raise ValueError("expected memory as sbatch --mem takes it (16G, 4000M, 0)")
        return text.upper()

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: Any, info: ValidationInfo) -> Any:
        return _no_value(info) if value is None else parse_time_minutes(value)

    @field_validator("setup", mode="before")
    @classmethod
    def _lines(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return _no_value(info)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError("expected a list of shell lines")
        return value

    @field_validator("extra", mode="before")
    @classmethod
    def _extra(cls, value: Any, info: ValidationInfo) -> Any:
        return _no_value(info) if value is None else _check_extra(value)


OPTION_KEYS: tuple[str, ...] = tuple(SlurmOptions.model_fields)
# what the command line may override (--nodes, --gpus-per-node, ...): every key but `setup` and `extra`
FLAG_KEYS: tuple[str, ...] = tuple(k for k in OPTION_KEYS if k not in ("setup", "extra"))


def _no_value(info: ValidationInfo) -> None:
    """None for an option whose default is None (unset); else the error that it needs a value."""
    field = SlurmOptions.model_fields[info.field_name]
    if field.default is not None:  # a value, or a default_factory
        raise ValueError(f"needs a value ({field.description})")
    return None


def config_file_of(options: dict) -> Path | None:
    """The cluster config file: --slurm-config, else $STUDY_SLURM_CONFIG, else none (built-in defaults)."""
    name = options.get("config_file") or os.environ.get("STUDY_SLURM_CONFIG")
    return Path(name).expanduser().resolve() if name else None


def check_options(options: dict) -> dict:
    """Validate the SLURM options (config file, overrides, pass-through) and return them resolved.

    ``options`` is what the command line parsed: ``{"config_file", "overrides", "extra"}``.
    Returns every key of :class:`SlurmOptions` (the file's values, the flags' over them, the
    file's ``extra`` updated by ``--slurm-opt``) and ``config_file``. Every problem is one
    :class:`UserError` naming the file and the key, or the flag. Imports neither submitit nor
    ray and does not contact the cluster.
    """
    path = config_file_of(options)
    base = SlurmOptions() if path is None else _validate(_read_config(path), source=str(path))
    overrides = dict(options.get("overrides") or {})
    for key in overrides:
        if key not in FLAG_KEYS:
            raise UserError(f"unknown SLURM option{did_you_mean(key, FLAG_KEYS)}", source="--" + key)
    given = _validate({**overrides, "extra": dict(options.get("extra") or {})}, source=None)
    values = base.model_dump()
    values.update(given.model_dump(include=set(overrides)))
    values["extra"] = {**base.extra, **given.extra}
    values["config_file"] = str(path) if path else None
    return values


def _validate(data: dict, *, source: str | None) -> SlurmOptions:
    """``data`` checked by the schema; ``source``: the config file, None for the command line."""
    try:
        return SlurmOptions.model_validate(data, context={"cli": source is None})
    except ValidationError as err:
        msg, key = pydantic_message(err, OPTION_KEYS)
        if source is None:  # name the flag the value came from
            flag = "--slurm-opt" if key == "extra" else "--" + str(key).replace("_", "-")
            raise UserError(msg, source=flag) from None
        raise UserError(msg, source=source, key=key) from None


def _read_config(path: Path) -> dict:
    from study.core.files import read_yaml

    raw = read_yaml(path, "cluster config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping of keys, got {type(raw).__name__}", source=str(path))
    return {str(key): value for key, value in raw.items()}


def parse_time_minutes(value: Any) -> int:
    """A SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes.

    Raises ValueError saying what is allowed.
    """
    bad = ValueError("expected minutes or [D-]HH:MM[:SS]")
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
        raise ValueError("the time limit must be at least 1 minute")
    return minutes


def _check_extra(value: Any) -> dict:
    """The pass-through sbatch options, flag names normalised (``mail_type`` -> ``mail-type``)."""
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of sbatch options")
    out = {}
    for key, v in value.items():
        key = str(key)
        flag = key.lstrip("-").replace("_", "-")
        if not _EXTRA_KEY_RE.match(flag):
            raise ValueError(f"'{key}' is not an sbatch option name")
        if flag in _MANAGED:
            own = _MANAGED[flag]
            hint = f"; use '{own}' (--{own.replace('_', '-')})" if own else " (set by submitit)"
            raise ValueError(f"'{key}' cannot be passed through{hint}")
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            v = v.strip().lower() == "true"
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"'{key}': expected a scalar value, got {v!r}")
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
