"""Study files: schema, expansion into cells, stable cell ids, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.core.errors import UserError
from study.studyfile import cell_hash, load_study, read_study_file

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

GOOD = """
name: toy
fixed: {method: interclr, margin_type: cosine}
factors:
  sampling: [random, hard]
  boundary:
    - {label: "cos -0.5", set: {margin: -0.5}}
    - {label: "cos 0", set: {margin: 0.0}}
seeds: [0, 1, 2]
presets:
  smoke: {seeds: [0], resources: {cpus: 1}}
"""


def write(tmp_path, text, name="study.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["labels", "sampling", "boundary", "final"])
@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "imagenet"])
def test_shipped_study_files_expand(name, preset):
    study = load_study(EXPERIMENTS / f"{name}.yaml", preset)
    assert study.name == name
    n_levels = 1
    for levels in study.spec.factors.values():
        n_levels *= len(levels)
    seeds = {c.seed for c in study.cells}
    assert len(study.cells) == n_levels * len(seeds)
    assert len({c.cell_id for c in study.cells}) == len(study.cells)
    if preset == "cpu":
        assert len(seeds) >= 3


def test_expansion_and_resolution(tmp_path):
    study = load_study(write(tmp_path, GOOD), "cpu")
    assert len(study.cells) == 2 * 2 * 3
    cell = next(c for c in study.cells if c.levels == {"sampling": "hard", "boundary": "cos 0"} and c.seed == 2)
    assert cell.config.sampling == "hard" and cell.config.margin == 0.0 and cell.config.seed == 2
    assert cell.config.margin_type == "cosine" and cell.config.epochs == 5  # the cpu preset's
    assert cell.level == "hard / cos 0"
    smoke = load_study(write(tmp_path, GOOD), "smoke", {"epochs": 1})
    assert len(smoke.cells) == 4 and all(c.config.epochs == 1 for c in smoke.cells)


def test_cell_id_is_stable_and_sensitive(tmp_path):
    a = load_study(write(tmp_path, GOOD), "cpu")
    b = load_study(write(tmp_path, GOOD, "other.yaml"), "cpu")
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]
    # execution-only keys do not change the id; results-changing keys do
    c0 = a.cells[0].config
    assert cell_hash(c0.model_copy(update={"threads": 7, "progress": False})) == a.cells[0].cell_id
    assert cell_hash(c0.model_copy(update={"lr": 0.1})) != a.cells[0].cell_id
    assert load_study(write(tmp_path, GOOD), "cpu", {"lr": 0.1}).cells[0].cell_id != a.cells[0].cell_id


BAD = [
    ("name: x\nfactors: {sampling: [hard]}\npresets: {smoke: ~}\n", ["presets.smoke", "expected a mapping", "None"]),
    ("name: x\nfactors: {}\n", ["factors", "at least one factor"]),
    ("name: x\nfactors: {sampling: [random]}\nseedz: [0]\n", ["seedz", "did you mean 'seeds'"]),
    ("name: x\nfactors: {sampling: [random, hardest]}\n", ["sampling", "hardest", "semi-hard"]),
    ("name: x\nfactors: {sampling: []}\n", ["factors", "sampling", "no levels"]),
    ("name: x\nfactors: {sampling: [hard, hard]}\n", ["factors", "duplicate levels: hard"]),
    ("name: x\nfactors: {sampling: [hard]}\nseeds: [0, zero]\n", ["seeds", "integer"]),
    ("name: x\nfactors: {sampling: [hard]}\nseeds: 3\n", ["seeds", "list"]),
    ("name: x\nfactors: {neg_num: [0]}\n", ["neg_num", "greater than or equal to 1"]),
    ("name: x\nfixed: {negnum: 3}\nfactors: {sampling: [hard]}\n", ["fixed", "negnum", "did you mean 'neg_num'"]),
    ("name: x\nfactors: {sampling: [hard]}\npresets: {huge: {}}\n", ["presets", "unknown preset 'huge'"]),
    ("name: x\nfactors: {sampling: [hard]\n", ["broken YAML", "line"]),
    ("", ["empty"]),
    ("- just\n- a list\n", ["mapping"]),
    ("factors: {sampling: [hard]}\n", ["name", "Field required"]),
    # a level mapping: the union's member that matches what was written is the one named
    ("name: x\nfactors: {b: [{label: a, sett: {margin: 0.5}}]}\n",
     ["factors.b[0].sett", "did you mean 'set'", "allowed: label, set"]),
    ("name: x\nfactors: {b: [{label: a}]}\n", ["factors.b[0].set", "needs the keys label, set", "missing"]),
    ("name: x\nfactors: {b: [[1, 2]]}\n", ["factors.b[0]'", "plain value", "mapping", "[1, 2]"]),
    ("name: x\nfactors: {b: [{label: 3, set: {margin: 0.5}}]}\n", ["factors.b[0].label", "string", "got 3"]),
    ("name: x\nfactors: {sampling: [hard]}\npresets: {cpu: {resources: {cpu: 1}}}\n",
     ["presets.cpu.resources.cpu", "did you mean 'cpus'", "allowed: cpus, gpus"]),
    # a key the levels vary, also given where the levels override it: it would be silently lost
    ("name: x\nfixed: {sampling: hard}\nfactors: {sampling: [random, hard]}\n",
     ["fixed.sampling", "factor 'sampling'", "remove it from fixed"]),
    ("name: x\nfactors: {b: [{label: a, set: {margin: 0.5}}]}\npresets: {cpu: {set: {margin: 0.1}}}\n",
     ["presets.cpu.set.margin", "factor 'b'", "override"]),
    # 'finding' names one of the paper's findings, one this study's factors can test
    ("name: x\nfinding: samplin\nfactors: {sampling: [hard]}\n",
     ["'finding'", "did you mean 'sampling'", "allowed: labels, sampling, boundary, method"]),
    ("name: x\nfinding: boundary\nfactors: {sampling: [hard]}\n",
     ["'finding'", "factor 'boundary'", "does not vary", "its factors: sampling"]),
    # a time limit or a tolerance must be a finite number in its range (YAML's .inf, .nan and 1e308 are numbers)
    ("name: x\nfactors: {sampling: [hard]}\nmax_cell_hours: .inf\n", ["max_cell_hours", "finite number"]),
    ("name: x\nfactors: {sampling: [hard]}\nmax_cell_hours: 1.0e+308\n", ["max_cell_hours", "less than or equal"]),
    ("name: x\nfactors: {sampling: [hard]}\npresets: {cpu: {max_epoch_minutes: 1.0e-9}}\n",
     ["presets.cpu.max_epoch_minutes", "greater than or equal to 0.05"]),
    ("name: x\nfactors: {sampling: [hard]}\nequivalence_delta: .nan\n", ["equivalence_delta", "finite number"]),
]


@pytest.mark.parametrize("text, words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_study_files(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_study(path, "cpu")
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("sets, words", [
    ({"lr": "abc"}, ["--set lr=abc", "key 'lr'", "valid number", "level random / cos -0.5, seed 0"]),
    # fails only in the cells that use a pool: the first of them is named
    ({"pool": 30000}, ["--set pool=30000", "'pool'", "exceeds the bank size 20000", "level"]),
])
def test_a_bad_set_is_blamed_on_the_set_not_on_a_level(tmp_path, sets, words):
    """A --set value every cell gets is reported as that --set, not as the study file's first level."""
    path = write(tmp_path, GOOD.replace("[random, hard]", "[random, semi-hard]"))
    with pytest.raises(UserError) as err:
        load_study(path, "cpu", sets)
    msg = str(err.value)
    assert msg.startswith("--set "), msg
    for w in words:
        assert w in msg, (w, msg)
    # a level's own bad value still names the file and the level
    bad_level = GOOD.replace("margin: 0.0", "margin: zero")
    with pytest.raises(UserError, match=r"study.yaml \(level random / cos 0, seed 0\): key 'margin'"):
        load_study(write(tmp_path, bad_level), "cpu", {"lr": 0.1})


@pytest.mark.parametrize("sets, words", [
    # every level would run arc under its 'cos ...' label
    ({"margin": 0.5}, ["--set margin=0.5", "factor 'boundary'", "change the levels"]),
    ({"sampling": "hard"}, ["--set sampling=hard", "factor 'sampling'"]),
    ({"seed": 5}, ["--set seed=5", "'seeds' list"]),
])
def test_a_set_may_not_override_what_the_levels_vary(tmp_path, sets, words):
    with pytest.raises(UserError) as err:
        load_study(write(tmp_path, GOOD), "cpu", sets)
    msg = str(err.value)
    for w in words:
        assert w in msg, (w, msg)
    load_study(write(tmp_path, GOOD), "cpu", {"margin_type": "arc"})  # a fixed key: the --set's purpose


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such study file"):
        read_study_file(tmp_path / "nope.yaml")


def _cli(tmp_path, *args):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
               STUDY_RUN_ROOT=str(tmp_path / "runs"), STUDY_RAY_RESULTS=str(tmp_path / "ray"))
    return subprocess.run([sys.executable, "-m", "study", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "{bad}"], ["seedz", "did you mean"]),
        (["run", "{missing}"], ["no such study file"]),
        (["run", "{good}", "--preset", "huge"], ["--preset", "unknown preset 'huge'"]),
        (["run", "{good}", "--cluster", "moon"], ["--cluster", "invalid choice", "local", "slurm"]),
        (["run", "{good}", "--set", "negnum=1"], ["negnum", "did you mean 'neg_num'"]),
        (["run", "{good}", "--set", "labels=sometimes"], ["labels", "online", "offline"]),
        (["run", "{good}", "--set", "lr=0.1", "--set", "lr=0.2"], ["--set", "'lr'", "given twice"]),
        (["run", "{good}", "--set", "lr="], ["--set", "'lr'", "expected a value"]),
        (["run", "{good}", "--set", "boundary=1", "--dry-run"], ["--set", "'boundary'", "unknown key"]),
        (["run", "{good}", "--set", "sampling=hard", "--dry-run"], ["--set sampling=hard", "levels"]),
        (["run", "{good}", "--set", "lr=abc"], ["--set lr=abc", "valid number", "first cell it fails"]),
        (["status", "{bad}"], ["seedz"]),
        (["run", "{good}", "--set", "LR=0.1"], ["'LR'", "did you mean 'lr'"]),
        (["status", "{good}", "--set", "device=tpu"], ["--set device=tpu", "auto, cpu, cuda or cuda:N"]),
    ],
)
def test_cli_bad_input_writes_nothing(tmp_path, args, words):
    (tmp_path / "store").mkdir()
    paths = {"bad": str(write(tmp_path, "name: x\nfactors: {sampling: [random]}\nseedz: [0]\n", "bad.yaml")),
             "good": str(write(tmp_path, GOOD, "good.yaml")), "missing": str(tmp_path / "missing.yaml")}
    res = _cli(tmp_path, *[a.format(**paths) for a in args])
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "store" / "mlflow.db").exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ray").exists()


def test_dry_run_prints_cells_and_writes_nothing(tmp_path):
    (tmp_path / "store").mkdir()
    res = _cli(tmp_path, "run", str(EXPERIMENTS / "sampling.yaml"), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "12 cells = 4 levels x 3 seeds" in res.stdout and "1 CPU" in res.stdout
    assert res.stdout.count("semi-hard") == 3
    assert not (tmp_path / "store" / "mlflow.db").exists()


def test_the_parent_carries_the_hypotheses_and_the_analysis_reads_them():
    from types import SimpleNamespace

    from analysis.hypotheses import Design, from_tags
    from analysis.load import _plan, empty_study

    study = load_study(EXPERIMENTS / "sampling.yaml", "cpu")
    tags = study.parent_tags()
    assert tags["seeds"] == "0,1,2" and "finding" not in tags
    assert tags["levels"] == '["random", "semi-easy", "semi-hard", "hard"]'  # what the analysis lists as missing
    kept = from_tags(tags, "hypotheses")
    assert kept[0] == {"name": "semi-hard-negatives", "claim": study.hypotheses[0].claim,
                       "better": {"sampling": "semi-hard"}, "worse": {"sampling": "hard"}}
    assert kept[1] == {"name": "fewer-false-negatives", "claim": study.hypotheses[1].claim, "family": "mechanism",
                       "metric": "neg_false_ratio", "better": {"sampling": "semi-hard"}, "worse": {"sampling": "hard"}}
    assert Design.load(from_tags(tags, "design")) == study.design
    assert tags["description"] == study.spec.description
    parent = SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(run_id="p"))
    plan = _plan(parent, "sampling", empty_study("sampling", True), None)
    assert [h.name for h in plan["hypotheses"]] == ["semi-hard-negatives", "fewer-false-negatives",
                                                     "less-biased-negatives"] and plan["planned_seeds"] == (0, 1, 2)
    assert [h.family for h in plan["hypotheses"]] == ["primary", "mechanism", "mechanism"]
    assert plan["design"].levels["sampling"]["semi-hard"] == {"sampling": "semi-hard"}