"""One YAML reader for every file and value the toolkit reads (issue 12, class A).

YAML 1.2 scalars (what a person means: ``1e-3`` is a number, ``off`` is a word)
and a key given twice is one error naming the file, the key and both lines,
for study files, cluster config files, ``--set`` and ``--slurm-opt`` values.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.core.config import parse_sets
from study.core.errors import UserError
from study.core.files import load_yaml_text, parse_scalar, read_yaml
from study.studyfile import load_study

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("5e-4", 0.0005), ("1E5", 100000.0), ("-1.5e+2", -150.0), ("0.5", 0.5), ("-.5", -0.5),
    ("3", 3), ("0o17", 15), ("0x1F", 31), ("012", 12),  # YAML 1.1 read 012 as octal 10
    ("true", True), ("false", False),
    ("on", "on"), ("off", "off"), ("yes", "yes"), ("no", "no"), ("y", "y"), ("Off", "Off"),
    ("~", None), ("null", None), ("", None),
    ("[8, 16]", [8, 16]), ("semi-hard", "semi-hard"), ("1:30", "1:30"),  # no sexagesimal in 1.2
])
def test_scalars_follow_yaml_1_2(text, value):
    got = parse_scalar(text, "--set x")
    assert got == value and type(got) is type(value), (text, got)
    # the same rules inside a file
    assert load_yaml_text(f"k: {text}\n", "f.yaml")["k"] == value


def test_infinity_and_nan_parse_and_the_schema_refuses_them(tmp_path):
    assert parse_scalar(".inf", "--set x") == math.inf
    assert math.isnan(parse_scalar(".nan", "--set x"))
    with pytest.raises(UserError, match="lr.*finite"):
        from study.core.config import build_config

        build_config("smoke", parse_sets(["lr=.inf"]), source="--set")


def test_set_values_as_documented():
    sets = parse_sets(["lr=1e-3", "weight_decay=5e-4", "amp=off", "channels_last=on", "widths=[8, 16]"])
    assert sets == {"lr": 0.001, "weight_decay": 0.0005, "amp": "off", "channels_last": "on", "widths": [8, 16]}
    from study.core.config import build_config

    cfg = build_config("smoke", sets, source="--set")
    assert cfg.lr == 0.001 and cfg.amp == "off" and cfg.channels_last == "on"


def test_study_file_numbers_and_words(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nfixed: {weight_decay: 5e-4, lr: 1E-2, amp: off, channels_last: on}\n"
                    "factors: {sampling: [hard]}\nseeds: [0]\n")
    cfg = load_study(path, "smoke").cells[0].config
    assert cfg.weight_decay == 0.0005 and cfg.lr == 0.01 and cfg.amp == "off" and cfg.channels_last == "on"


DUPKEYS = """name: dupkeys
fixed: {method: interclr, epochs: 1, margin: -0.5, margin: 0.5}
factors:
  sampling: [random, semi-easy, semi-hard, hard]
  sampling: [semi-hard, hard]
seeds: [0, 1, 2]
seeds: [0]
"""


@pytest.mark.parametrize("text, key, places", [
    (DUPKEYS, "fixed.margin", ["line 2, column 38", "line 2, column 52"]),
    ("name: a\nfactors: {sampling: [hard]}\nseeds: [0]\nseeds: [1]\n", "seeds", ["line 3", "line 4"]),
    ("name: a\nfactors:\n  sampling: [hard]\n  sampling: [random]\n", "factors.sampling", ["line 3", "line 4"]),
    # nested, inside a level's `set`
    ("name: a\nfactors:\n  boundary:\n    - label: x\n      set: {margin: 0.0}\n    - label: y\n      set:\n"
     "        margin: 0.5\n        margin: 0.2\n", "factors.boundary[1].set.margin", ["line 8", "line 9"]),
    # quoting does not make a key different
    ("name: a\n'name': b\nfactors: {sampling: [hard]}\n", "name", ["line 1", "line 2"]),
])
def test_duplicate_keys_are_one_error_with_both_lines(tmp_path, text, key, places):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_study(path, "smoke")
    msg = str(err.value)
    assert str(path) in msg and f"key '{key}'" in msg and "given twice" in msg, msg
    for place in places:
        assert place in msg, msg


def test_duplicate_key_in_a_set_value():
    with pytest.raises(UserError, match="--set widths: key 'a': given twice"):
        parse_sets(["widths={a: 1, a: 2}"])


def test_cluster_config_file_uses_the_same_reader(tmp_path):
    from cluster.slurm_options import check_options

    path = tmp_path / "c.yaml"
    path.write_text("nodes: 1\npartition: gpu\npartition: cpu\n")
    with pytest.raises(UserError) as err:
        check_options({"config_file": str(path)})
    assert str(path) in str(err.value) and "key 'partition'" in str(err.value)
    assert "line 2" in str(err.value) and "line 3" in str(err.value)
    # YAML 1.2: `requeue: yes` in `extra` is the word yes (YAML 1.1 made it a bare flag, True)
    path.write_text("extra: {requeue: yes, mail-type: END, exclusive: true}\n")
    assert check_options({"config_file": str(path)})["extra"] == {"requeue": "yes", "mail-type": "END",
                                                                   "exclusive": True}


def test_slurm_opt_values_use_the_same_rules():
    from study.cli import _slurm_options, build_parser

    args = build_parser().parse_args(["run", "x.yaml", "--cluster", "slurm", "--slurm-opt", "exclusive=true",
                                      "--slurm-opt", "requeue=yes", "--slurm-opt", "nice=10"])
    assert _slurm_options(args)["extra"] == {"exclusive": True, "requeue": "yes", "nice": 10}


def test_read_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="no such cluster config file"):
        read_yaml(tmp_path / "nope.yaml", "cluster config file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml: broken YAML at line 2"):
        read_yaml(bad, "study file")


def test_no_other_yaml_reader():
    """study/core/files.py is the only place that parses YAML (no PyYAML, no second ruamel loader)."""
    offenders = []
    for folder in ("study", "cluster", "analysis", "bench"):
        for py in (REPO / folder).rglob("*.py"):
            text = py.read_text()
            if py.name != "files.py" and ("import yaml" in text or "ruamel" in text):
                offenders.append(str(py.relative_to(REPO)))
    assert not offenders, offenders


def test_cli_duplicate_keys_exit_2_and_write_nothing(tmp_path):
    path = tmp_path / "dupkeys.yaml"
    path.write_text(DUPKEYS)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               STUDY_RUN_ROOT=str(tmp_path / "runs"), STUDY_RAY_RESULTS=str(tmp_path / "ray"))
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke", "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "key 'fixed.margin': given twice" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_the_resume_command_reads_back_the_same_sets():
    """The printed resume command quotes a string YAML would read as another type ("2024", "true")."""
    import shlex

    from study.runner import rerun_command
    from study.studyfile import load_study

    study = load_study(REPO / "experiments" / "sampling.yaml", "smoke")
    sets = {"data_root": "2024", "amp": "off", "lr": 0.1, "widths": [8, 16], "test_subset": None, "stream": False}
    words = shlex.split(rerun_command(study, sets))
    assert parse_sets([words[i + 1] for i, w in enumerate(words) if w == "--set"]) == sets


def test_the_resume_command_keeps_the_backend_and_its_flags():
    """A study run with --cluster slurm and its options resumes with them (not on this machine)."""
    import shlex

    from study.cli import _launch_words, build_parser
    from study.resume import remember_launch, rerun_command
    from study.studyfile import load_study

    study = load_study(REPO / "experiments" / "sampling.yaml", "smoke")
    parser = build_parser()
    args = parser.parse_args(["run", "x.yaml", "--cluster", "slurm", "--nodes", "2", "--slurm-opt",
                              "mail-type=END", "--wait", "--no-rerun-failed"])
    from study.cli import _slurm_options

    try:
        from study.retry import flag_words

        remember_launch(_launch_words(args, _slurm_options(args)) + flag_words(args.rerun_failed))
        words = shlex.split(rerun_command(study))
        i = words.index("--cluster")
        assert words[i:] == ["--cluster", "slurm", "--nodes", "2", "--slurm-opt", "mail-type=END", "--wait",
                             "--no-rerun-failed"]
        assert parser.parse_args(words[3:]).slurm_nodes == "2"  # the printed command parses back
        remember_launch(_launch_words(parser.parse_args(["run", "x.yaml"]), _slurm_options(
            parser.parse_args(["run", "x.yaml"]))))
        assert "--cluster" not in rerun_command(study)  # the default backend: no words
    finally:
        remember_launch([])
