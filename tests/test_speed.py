"""The speed-ups change no result: channels_last on the CPU equals NCHW to float rounding, eval
features do not depend on the batch size, the feature memo serves exactly what a fresh extraction
gives; and the per-cell timing of bench.cell accounts for the whole run."""

from __future__ import annotations

import pytest
import torch

from bench import cell
from bench.states import build_trainer, synthetic_data
from study.train.evaluation import FeatureMemo
from study.method.model import use_channels_last


@pytest.mark.parametrize("check", [cell.check_channels_last_equivalent, cell.check_eval_batch_invariance,
                                   cell.check_feature_memo], ids=lambda f: f.__name__)
def test_speedup_check_passes(check):
    result = check()
    assert result.passed, result.line()


@pytest.mark.parametrize(("setting", "device", "backbone", "expected"), [
    ("auto", "cpu", "convnet", False),  # NCHW by default on a CPU: the default changes no result
    ("on", "cpu", "convnet", True),
    ("auto", "cpu", "resnet18", False),
    ("auto", "cpu", "resnet50", False),
    ("auto", "cuda", "resnet50", True),
    ("on", "cpu", "resnet18", True),
    ("off", "cuda", "convnet", False),
    ("off", "cpu", "convnet", False),
])
def test_channels_last_choice(setting, device, backbone, expected):
    assert use_channels_last(setting, device, backbone) is expected


def test_trainer_applies_the_layout():
    data = synthetic_data(64, 16)
    base = {"widths": [8, 16, 32], "image_size": 16, "batch_size": 32, "queue_size": 64, "method": "mocov2"}
    on = build_trainer("cpu", {**base, "channels_last": "on"}, data)
    off = build_trainer("cpu", {**base, "channels_last": "off"}, data)
    conv_on = next(m for m in on.moco.encoder_q.modules() if isinstance(m, torch.nn.Conv2d))
    conv_off = next(m for m in off.moco.encoder_q.modules() if isinstance(m, torch.nn.Conv2d))
    assert on.channels_last and conv_on.weight.is_contiguous(memory_format=torch.channels_last)
    assert not off.channels_last and conv_off.weight.is_contiguous()
    v1, v2, _ = on._batch_views(torch.arange(32), data.train_images[:32])
    assert v1.is_contiguous(memory_format=torch.channels_last) and v2.is_contiguous(memory_format=torch.channels_last)


def test_memo_keys_on_state_and_arguments():
    memo = FeatureMemo()
    enc = torch.nn.Linear(2, 2)
    feats = torch.ones(3, 2)
    idx = torch.tensor([4, 1, 2])
    memo.put((5, 0), enc, "train", idx, False, feats)
    assert memo.get((5, 0), enc, "train", idx.clone(), False) is feats  # indices compared by value
    assert memo.get((5, 0), enc, "train", torch.tensor([4, 1, 3]), False) is None
    assert memo.get((5, 0), enc, "train", None, False) is None
    assert memo.get((5, 0), enc, "test", idx, False) is None
    assert memo.get((5, 0), enc, "train", idx, True) is None
    assert memo.get((5, 0), torch.nn.Linear(2, 2), "train", idx, False) is None
    assert memo.get((6, 0), enc, "train", idx, False) is None  # another state drops every entry
    assert memo.entries == [] and memo.get((5, 0), enc, "train", idx, False) is None


def test_model_state_changes_with_any_in_place_update():
    enc = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    s0 = FeatureMemo.model_state(3, enc)
    assert FeatureMemo.model_state(3, enc) == s0
    assert FeatureMemo.model_state(4, enc) != s0
    with torch.no_grad():
        enc[0].weight.mul_(0.5)
    assert FeatureMemo.model_state(3, enc) != s0
    s1 = FeatureMemo.model_state(3, enc)
    enc.load_state_dict(enc.state_dict())  # copy_ into every tensor
    assert FeatureMemo.model_state(3, enc) != s1


def test_cell_timing_covers_the_run(tmp_path):
    res = cell.time_cell("cpu", cell.QUICK_OVERRIDES, out_dir=tmp_path / "run")
    assert set(res["wall"]) == set(cell.PHASES)
    assert all(v >= 0 for v in res["wall"].values())
    assert res["wall"]["train"] > 0 and res["wall"]["eval"] > 0 and res["wall"]["probe"] > 0
    assert res["wall"]["start-up: bank init"] > 0 and res["wall"]["start-up: data + model"] > 0
    # the phases partition the run: they add up to its wall time
    assert sum(res["wall"].values()) == pytest.approx(res["total_wall"], abs=0.5)  # timer reads a few ns apart (ms under load)
    assert res["steps"] == 2 * 3 and "linear_top1" in res["final"]
    rows = cell.breakdown_rows(res)
    assert rows[-1][0] == "total" and rows[-1][2] == 100.0


def test_bare_on_off_set_the_layout():
    """YAML reads a bare on/off as a boolean: `--set channels_last=off` must still mean "off"."""
    from study.core.config import build_config, parse_sets

    assert build_config("smoke", parse_sets(["channels_last=off"])).channels_last == "off"
    assert build_config("smoke", parse_sets(["channels_last=on"])).channels_last == "on"
    assert build_config("smoke", {"channels_last": "auto"}).channels_last == "auto"
