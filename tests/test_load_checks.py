"""What a later stage would reject is rejected when the study loads (issue 12, class B).

Names that MLflow, the file system or the analysis cannot take, relative paths
and size limits are one error at load (exit 2, nothing written), so a study that
passes ``--dry-run`` does not fail on its inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.core.errors import UserError
from study.studyfile import cell_params, factor_name_problem, load_study

REPO = Path(__file__).resolve().parents[1]

BADFACTOR = """name: badfactor
fixed: {method: interclr, labels: online, sampling: semi-hard, epochs: 1}
factors:
  "margin (cos)":
    - {label: "m-0.5", set: {margin_type: cosine, margin: -0.5}}
    - {label: "m0", set: {margin_type: cosine, margin: 0.0}}
seeds: [0]
"""


def _write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _study(name="s", factor="sampling", levels="[hard]", extra=""):
    return f"name: {name}\nfactors:\n  {factor}: {levels}\nseeds: [0]\n{extra}"


@pytest.mark.parametrize("text, words", [
    (BADFACTOR, ["margin (cos)", "MLflow param key"]),
    (_study(factor='"a/b"', levels="[{label: x, set: {margin: 0.0}}]"), ["'a/b'", "not allowed"]),
    (_study(factor='"a,b"', levels="[{label: x, set: {margin: 0.0}}]"), ["'a,b'", "not allowed"]),
    (_study(factor='".."', levels="[{label: x, set: {margin: 0.0}}]"), ["'..'", "file paths"]),
    (_study(factor='" pad"', levels="[{label: x, set: {margin: 0.0}}]"), ["' pad'", "file paths"]),
    (_study(factor="seed", levels="[{label: x, set: {margin: 0.0}}]"), ["'seed'", "taken"]),
    (_study(factor='"' + "f" * 201 + '"', levels="[{label: x, set: {margin: 0.0}}]"), ["not allowed"]),
    # level labels: shown in run names and tags
    (_study(factor="boundary", levels='[{label: "a\\nb", set: {margin: 0.0}}]'), ["U+000A", "does not show"]),
    (_study(factor="boundary", levels='[{label: "  ", set: {margin: 0.0}}]'), ["blank"]),
    (_study(factor="boundary", levels='[{label: "a / b", set: {margin: 0.0}}]'), ["' / '", "joins"]),
    (_study(factor="boundary", levels='[{label: "a|b", set: {margin: 0.0}}]'), ["'|'", "Markdown"]),
    (_study(factor="boundary", levels='[{label: "' + "x" * 101 + '", set: {margin: 0.0}}]'), ["101 characters"]),
    # study names: an MLflow experiment and a folder under runs/, mlartifacts/, ray_results/
    (_study(name='".."'), ["name", "letters, digits"]),
    (_study(name="a/b"), ["name", "letters, digits"]),
    (_study(name="-x"), ["name", "letters, digits"]),
    (_study(name="x" * 101), ["name", "letters, digits"]),
    (_study(name="report.MD"), ["name", "taken", "results/report.MD"]),
    # the metric the analysis ranks by
    (_study(extra="metric: knn_top5\n"), ["metric", "knn_top1"]),
    # numbers that pass range checks and break training
    (_study(extra="fixed: {lr: .inf}\n"), ["lr", "finite"]),
    (_study(extra="fixed: {margin: .nan}\n"), ["margin", "finite"]),
    # limits that train_subset already breaks
    (_study(extra="fixed: {train_subset: 32, batch_size: 64}\n"), ["batch_size", "exceeds"]),
    (_study(extra="fixed: {data_root: /nonexistent/fashion}\n"), ["data_root", "/nonexistent/fashion",
                                                                    "does not exist"]),
    # seeds: an int64 in the store and numpy's range, at the top and in a preset
    ("name: s\nfactors: {sampling: [hard]}\nseeds: [99999999999999999999]\n", ["seeds", "0..4294967295"]),
    ("name: s\nfactors: {sampling: [hard]}\nseeds: [-1]\n", ["seeds", "0..4294967295", "-1"]),
    (_study(extra="presets: {smoke: {seeds: [1, 1]}}\n"), ["presets.smoke.seeds", "duplicate seeds"]),
    (_study(extra="presets: {smoke: {seeds: [4294967296]}}\n"), ["presets.smoke.seeds", "0..4294967295"]),
    # a finding is a main effect in a crossed study; one of a factor the study does not vary is refused
    ("name: s\nfinding: labels\nfactors: {sampling: [semi-hard, hard]}\nseeds: [0]\n",
     ["finding", "factor 'labels', which this study does not vary"]),
    # a metric some level never records: its comparison would pair no seed
    ("name: s\nmetric: nmi\nfactors: {method: [interclr, mocov2]}\nseeds: [0]\n",
     ["metric", "'nmi' is not recorded by level 'mocov2'", "no pseudo-labels", "knn_top1"]),
    (_study(extra="metric: linear_top1\nfixed: {linear_epochs: 0}\n"), ["metric", "linear_epochs is 0"]),
    # the batch limit holds for MoCo v2 too (it has no bank, but it has a training set)
    (_study(extra="fixed: {method: mocov2, batch_size: 1025}\n"), ["batch_size", "1025 exceeds"]),
    (_study(extra="fixed: {widths: [0, -1]}\n"), ["widths", "greater than or equal to 1"]),
    # a device no trainer could use
    (_study(extra="fixed: {device: tpu}\n"), ["device", "auto, cpu, cuda or cuda:N", "tpu"]),
    # a margin past its meaningful range, and a warm-up that leaves the inter branch no epoch
    (_study(extra="fixed: {margin_type: cosine, margin: 10}\n"), ["margin", "[-2, 2]", "10.0"]),
    (_study(extra="fixed: {margin_type: arc, margin: -3.5}\n"), ["margin", "[-pi, pi]"]),
    (_study(extra="fixed: {intra_margin_type: arc, intra_margin: 4}\n"), ["intra_margin", "[-pi, pi]"]),
    (_study(extra="fixed: {warmup_epochs: 2}\n"), ["warmup_epochs", "no epoch", "0..1"]),
    # a finding whose comparisons these levels cannot form
    ("name: s\nfinding: sampling\nfactors: {sampling: [random, hard]}\nseeds: [0]\n",
     ["finding", "{sampling: semi-hard} matches no level of factor 'sampling'", "random, hard"]),
    ("name: s\nfinding: boundary\nfactors:\n  boundary:\n    - {label: a, set: {margin: -0.5}}\n"
     "    - {label: b, set: {margin: -0.25}}\nseeds: [0]\n", ["finding", "'margin_type' is not a setting this study "
                                                              "varies", "settings the levels set: margin"]),
    ("name: s\nfinding: boundary\nfactors:\n  boundary:\n    - {label: a, set: {margin_type: cosine, margin: -0.5}}\n"
     "    - {label: b, set: {margin_type: cosine, margin: -0.25}}\nseeds: [0]\n",
     ["finding", "{margin_type: cosine, margin: 0.0} matches no level of factor 'boundary'"]),
])
def test_rejected_at_load(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_study(path, "smoke")
    msg = str(err.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_long_values_are_refused_before_mlflow(tmp_path, monkeypatch):
    # a param value over MLflow's limit (6,000 characters; no config value reaches it today, so the
    # limit is lowered to show the check)
    from study import studyfile

    monkeypatch.setattr(studyfile, "MAX_PARAM_VALUE", 20)
    study = _write(tmp_path, _study())
    with pytest.raises(UserError, match="key 'widths'.*at most 20"):
        load_study(study, "smoke", {"widths": [16] * 8})
    monkeypatch.undo()
    # a run name over 250 characters: three factors with 90-character labels
    text = ("name: s\nfactors:\n  margin: " + '[{label: "' + "m" * 90
            + '", set: {margin: 0.0}}]\n  intra_margin: [{label: "' + "i" * 90 + '", set: {intra_margin: 0.0}}]\n'
            + '  temperature: [{label: "' + "t" * 90 + '", set: {temperature: 0.1}}]\nseeds: [0]\n')
    with pytest.raises(UserError, match="run name.*250"):
        load_study(_write(tmp_path, text, "long.yaml"), "smoke")


def test_factor_rules_agree_with_mlflow():
    """Every factor name we accept is a param key and a tag key MLflow accepts."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_param_name, _validate_tag_name

    names = ["sampling", "boundary", "margin cos", "a.b", "a-b", "a:b", "x_1", "Größe", "margin (cos)", "a/b",
             "a/../b", "..", ".", "/abs", "a,b", "a\nb", "seed", " pad", "pad ", "a//b", "./a", "f" * 200]
    for name in names:
        if factor_name_problem(name) is None:
            _validate_param_name(name)
            _validate_tag_name(f"factor.{name}")
            assert len(f"factor.{name}") <= 250
        else:
            try:
                _validate_param_name(name)
            except MlflowException:
                continue  # refused by both
            # accepted by MLflow, refused by us for a reason of ours
            assert name in ("a/b", "a,b", "seed", " pad", "pad ") or "/" in name, name


def test_shipped_cells_fit_mlflow():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, _validate_param_name

    for name in ("labels", "sampling", "boundary", "final"):
        for cell in load_study(REPO / "experiments" / f"{name}.yaml", "cpu").cells:
            assert len(cell.name) <= 250
            for key, value in cell_params(cell).items():
                _validate_param_name(key)
                assert len(value) <= MAX_PARAM_VAL_LENGTH


def test_relative_data_root_is_made_absolute_at_load(tmp_path, monkeypatch):
    (tmp_path / "reldata" / "fashion-mnist").mkdir(parents=True)
    study = _write(tmp_path, _study(extra="fixed: {data_root: reldata/fashion-mnist}\n"))
    monkeypatch.chdir(tmp_path)
    cfg = load_study(study.name, "smoke").cells[0].config
    assert cfg.data_root == str(tmp_path / "reldata" / "fashion-mnist")
    # --set too, and ~
    from study.core.config import build_config

    assert build_config("smoke", {"data_root": "reldata"}).data_root == str(tmp_path / "reldata")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert build_config("smoke", {"data_root": "~/reldata"}).data_root == str(tmp_path / "reldata")


def test_cli_badfactor_dry_run_exit_2_nothing_written(tmp_path):
    path = _write(tmp_path, BADFACTOR, "badfactor.yaml")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               STUDY_RUN_ROOT=str(tmp_path / "runs"), STUDY_RAY_RESULTS=str(tmp_path / "ray"),
               STUDY_ARTIFACT_ROOT=str(tmp_path / "artifacts"))
    for extra in (["--dry-run"], []):
        res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke", *extra],
                             env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "margin (cos)" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not any(tmp_path.glob("mlflow.db*")) and not (tmp_path / "runs").exists()
    assert not (tmp_path / "ray").exists() and not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("extra, words", [
    ("presets: {smoke: {resources: {cpus: 64}}}\n", ["presets.smoke.resources.cpus", "64 CPUs", "1..2"]),
    ("presets: {smoke: {resources: {gpus: 1}}}\n", ["presets.smoke.resources.gpus", "0..0"]),
    ("fixed: {device: cuda}\n", ["device", "no GPU"]),
    ("fixed: {device: \"cuda:1\"}\n", ["device", "'cuda:1'", "no GPU", "allowed: auto, cpu"]),
])
def test_local_runs_that_could_never_start(tmp_path, monkeypatch, extra, words):
    """A cell asking more than this machine has would wait in Ray forever: refused before anything runs."""
    from cluster import local
    from study.backends import load_backend
    from study.runner import run_study

    monkeypatch.setenv("STUDY_NUM_CPUS", "2")
    monkeypatch.setattr(local, "_gpu_count", lambda: 0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = _write(tmp_path, _study(extra=extra))
    with pytest.raises(UserError) as err:
        run_study(str(path), backend=load_backend("local"), preset="smoke", dry_run=True)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_set_is_blamed_when_the_cell_builds_without_it(tmp_path):
    """A --set that breaks a limit named by another key (train_subset makes min_cluster too large) is
    reported as that --set, not as the study file's first level."""
    path = _write(tmp_path, "name: s\nfactors: {sampling: [random, hard]}\nseeds: [0]\n")
    with pytest.raises(UserError) as err:
        load_study(path, "smoke", {"train_subset": 100, "lr": 0.1})
    msg = str(err.value)
    assert msg.startswith("--set train_subset=100: key 'min_cluster'") and "lr" not in msg.split(":")[0], msg
    # the study file's own mistake stays the study file's, whatever --set is given
    bad = _write(tmp_path, "name: s\nfactors: {sampling: [random, hard]}\nfixed: {train_subset: 100}\n"
                           "seeds: [0]\n", "bad.yaml")
    with pytest.raises(UserError) as err:
        load_study(bad, "smoke", {"lr": 0.1})
    assert str(err.value).startswith(str(bad)), str(err.value)


def test_check_device():
    from study.core.config import check_device

    check_device("cpu", 0, source="x")
    check_device("cuda:1", 2, source="x")
    with pytest.raises(UserError, match="'cuda:2' but this machine has 2 GPUs .allowed: auto, cpu, cuda, cuda:0..1"):
        check_device("cuda:2", 2, source="x")


def test_train_refuses_a_device_it_does_not_have_and_an_unknown_preset(tmp_path, capsys):
    from study.cli import main

    for args, words in ((["--set", "device=cuda:99"], ["--set: key 'device'", "'cuda:99' but this machine has"]),
                        (["--preset", "smok"], ["--preset: unknown preset 'smok'", "did you mean 'smoke'"])):
        assert main(["train", "--preset", "smoke", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        for w in words:
            assert w in err, (w, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri, words", [
    ("/tmp/a/plain/path", ["must be sqlite:///"]), ("file:///tmp/x", ["must be sqlite:///", "file:///tmp/x"]),
    ("bogus://x", ["must be sqlite:///"]), ("postgresql+nodriver://u@h/db", ["needs the Python module nodriver"]),
    # a relative path names another store in each folder; options MLflow would drop (a read-only store written)
    ("sqlite:///relative/m.db", ["needs an absolute path", "four slashes"]),
    ("sqlite:////tmp/m.db?mode=ro", ["takes no options", "?mode=ro"]),
])
def test_a_store_uri_the_toolkit_cannot_use_is_one_error(tmp_path, monkeypatch, capsys, uri, words):
    """MLFLOW_TRACKING_URI is checked before MLflow would fail on it with a traceback (run, status, analysis;
    the commands' own main functions, in this process)."""
    from analysis.__main__ import main as analysis_main
    from study.cli import main as study_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    study_file = str(REPO / "experiments" / "sampling.yaml")
    for main, args in ((study_main, ["status", study_file]), (study_main, ["run", study_file, "--dry-run"]),
                       (analysis_main, ["--out", str(tmp_path / "out")])):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert "MLFLOW_TRACKING_URI" in err and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_train_and_analysis_refuse_an_out_they_cannot_write_before_any_work(tmp_path, capsys):
    from analysis.__main__ import main as analysis_main
    from study.cli import main as study_main

    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, words in ((["train", "--preset", "smoke", "--out", str(afile / "sub")], "is a file, not a folder"),
                        (["train", "--preset", "smoke", "--out", ""], "give a directory")):
        assert study_main(args) == 2 and words in capsys.readouterr().err, args
    for out in (afile, afile / "sub"):
        with pytest.raises(SystemExit) as err:  # argparse's error: exit 2
            analysis_main(["--out", str(out)])
        assert err.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "x"
