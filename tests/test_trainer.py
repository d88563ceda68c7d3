"""The trainer end to end at the smoke scale: every level of every factor,
resume equals uninterrupted, atomic checkpoints, the metrics files."""

from __future__ import annotations

import json

import pytest
import torch

from study.core.config import build_config
from study.train import checkpoint as ckpt
from study.train.trainer import Trainer, TrainingDiverged


def _cfg(**kw):
    return build_config("smoke", {"threads": 1, **kw})


LEVELS = [
    {"labels": "online"},
    {"labels": "offline", "recluster_every": 1},
    {"sampling": "random"},
    {"sampling": "semi-easy"},
    {"sampling": "semi-hard"},
    {"sampling": "hard"},
    {"sampling": "semi-hard", "neg_search": "candidates", "candidates": 300},
    {"margin_type": "none"},
    {"margin_type": "cosine", "margin": 0.5},
    {"margin_type": "arc", "margin": -0.3},
    {"margin_type": "arc", "margin": 0.3, "intra_margin_type": "cosine", "intra_margin": -0.1},
    {"method": "mocov2"},
    {"warmup_epochs": 1},
]


@pytest.mark.parametrize("overrides", LEVELS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_level_trains(overrides, smoke_data):
    cfg = _cfg(**overrides)
    seen = []
    final = Trainer(cfg, None, data=smoke_data, callback=lambda e, m, d: seen.append(e), log=lambda s: None).run()
    assert seen == [0, 1, 2]
    assert 0.0 <= final["knn_top1"] <= 1.0 and 0.0 <= final["linear_top1"] <= 1.0
    assert final["loss"] == final["loss"]  # not NaN
    if cfg.method == "interclr":
        assert "nmi" in final and "label_change_ratio" in final and "neg_sim_mean" in final
        assert final["loss_inter"] > 0
    else:
        assert "loss_inter" not in final and "nmi" not in final


def test_offline_labels_change_only_at_reclustering(smoke_data):
    cfg = _cfg(labels="offline", recluster_every=2, epochs=3)
    trainer = Trainer(cfg, None, data=smoke_data, log=lambda s: None)
    snapshots = []
    orig = trainer.train_epoch

    def spy():
        before = trainer.plabels.labels.clone() if trainer.plabels.labels.numel() else None
        out = orig()
        snapshots.append((trainer.epoch, before, trainer.plabels.labels.clone()))
        return out

    trainer.train_epoch = spy
    trainer.run()
    # epoch index 0 and 1 run on the initial clustering, epoch 2 re-clusters first
    e0_before, e0_after = snapshots[0][1], snapshots[0][2]
    assert torch.equal(e0_before, e0_after)
    assert torch.equal(snapshots[1][1], snapshots[1][2])
    assert not torch.equal(snapshots[1][2], snapshots[2][2])


def test_online_labels_follow_argmax(smoke_data):
    # no recompute inside the epoch, and the small-cluster fix (which moves members
    # without relabelling them) switched off: what is left is the relabel
    cfg = _cfg(labels="online", epochs=1, centroid_every=1000)
    trainer = Trainer(cfg, None, data=smoke_data, log=lambda s: None)
    trainer.plabels.fix_small_clusters = lambda feats, gen: 0
    trainer.run()
    bank, lab = trainer.bank.feats, trainer.plabels
    # every image was seen once this epoch (drop_last aside): its label is its argmax
    seen = torch.cat(
        __import__("study.data.datasets", fromlist=["epoch_batches"]).epoch_batches(
            trainer.num_train, cfg.batch_size, cfg.seed, 0)[: trainer.steps_per_epoch])
    expect = (bank[seen] @ lab.centroids.T).argmax(1)
    assert torch.equal(lab.labels[seen], expect)


def _state(trainer):
    return {k: v.clone() for k, v in trainer.moco.state_dict().items()}


class _Stop(Exception):
    pass


def test_resume_is_bitwise_equal(tmp_path, smoke_data):
    cfg = _cfg(epochs=3, sampling="semi-hard")
    straight = Trainer(cfg, tmp_path / "a", data=smoke_data, log=lambda s: None)
    final_a = straight.run()

    def stop_after_1(epoch, metrics, out):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        Trainer(cfg, tmp_path / "b", data=smoke_data, callback=stop_after_1, log=lambda s: None).run()
    assert ckpt.load_latest(tmp_path / "b")["epoch"] == 1
    resumed = Trainer(cfg, tmp_path / "b", data=smoke_data, log=lambda s: None)
    final_b = resumed.run()
    sa, sb = _state(straight), _state(resumed)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(straight.bank.feats, resumed.bank.feats)
    assert torch.equal(straight.plabels.labels, resumed.plabels.labels)
    assert torch.equal(straight.queue.keys, resumed.queue.keys)
    timing = ("epoch_time", "pairs_per_s")
    assert {k: v for k, v in final_a.items() if k not in timing} == {k: v for k, v in final_b.items() if k not in timing}
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3]
    # a finished run is not trained again
    again = Trainer(cfg, tmp_path / "b", data=smoke_data, log=lambda s: None)
    assert again.run() == final_b and again.step == 0


def test_execution_keys_keep_the_cell_and_resume(tmp_path, smoke_data):
    """threads, loader_workers, device (and progress) change how a run executes, not what it computes:
    the study cell keeps its id, and a run stopped under one setting resumes under another."""
    from study.studyfile import cell_hash

    cfg = _cfg(epochs=2, linear_epochs=0, device="cpu", loader_workers=0)
    moved = _cfg(epochs=2, linear_epochs=0, device="auto", loader_workers=2, threads=2, progress=False)
    assert cell_hash(cfg) == cell_hash(moved)

    def stop_after_1(epoch, metrics, out):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        Trainer(cfg, tmp_path, data=smoke_data, callback=stop_after_1, log=lambda s: None).run()
    logs = []
    resumed = Trainer(moved, tmp_path, data=smoke_data, log=logs.append)
    resumed.run()
    torch.set_num_threads(1)  # the moved config set 2 for this process
    assert any(line.startswith("resuming from epoch 1") for line in logs) and resumed.epoch == 2


def test_truncated_checkpoint_falls_back(tmp_path, smoke_data):
    cfg = _cfg(epochs=2)
    Trainer(cfg, tmp_path, data=smoke_data, log=lambda s: None).run()
    latest = tmp_path / ckpt.LATEST
    prev = torch.load(tmp_path / ckpt.PREVIOUS, weights_only=False)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    state = ckpt.load_latest(tmp_path)
    assert state is not None and state["epoch"] == prev["epoch"]


def test_outputs_and_config_mismatch(tmp_path, smoke_data):
    from study.core.errors import UserError

    cfg = _cfg(epochs=1)
    Trainer(cfg, tmp_path, data=smoke_data, log=lambda s: None).run()
    final = json.loads((tmp_path / "final.json").read_text())
    for key in ("knn_top1", "linear_top1", "knn_top1_epoch0", "nmi", "loss", "loss_intra", "loss_inter"):
        assert key in final
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0 and "knn_top1" in first and "loss" not in first
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 1
    with pytest.raises(UserError, match="different config.*epochs"):
        Trainer(_cfg(epochs=2), tmp_path, data=smoke_data, log=lambda s: None).run()


def test_divergence_is_reported(smoke_data):
    cfg = _cfg(lr=1e12, epochs=1)
    with pytest.raises(TrainingDiverged, match="loss is"):
        Trainer(cfg, None, data=smoke_data, log=lambda s: None).run()


@pytest.mark.parametrize(("world", "subset"), [(3, None), (4, torch.tensor([5, 1, 9, 30, 7, 2, 8]))])
def test_ddp_ranks_share_feature_extraction(smoke_data, monkeypatch, world, subset):
    """Each rank extracts only its contiguous share; the gathered result is every feature in order."""
    from study.train import evaluation as evaluation_module

    trainer = Trainer(_cfg(), None, data=smoke_data, log=lambda s: None)
    enc, evaluator = trainer.moco.encoder_q, trainer.evaluator
    full = evaluator._extract(enc, "train", subset, neck=False)  # (N, D), one process
    n = full.shape[0]
    every = torch.arange(n) if subset is None else subset
    for rank in range(world):
        asked = []

        def extract(encoder, split, indices, *, neck, _asked=asked):
            _asked.append(indices.clone())
            pos = indices if subset is None else torch.tensor([subset.tolist().index(i) for i in indices.tolist()])
            return full[pos]

        def gather(padded, _rank=rank):
            # what all_gather returns: every rank's share, padded to the largest one
            shares = torch.tensor_split(torch.arange(n), world)
            rows = shares[0].shape[0]
            assert padded.shape[0] == rows
            return torch.cat([torch.cat([full[s], full.new_zeros(rows - s.shape[0], full.shape[1])]) for s in shares])

        monkeypatch.setattr(evaluator, "world", world)
        monkeypatch.setattr(evaluator, "rank", rank)
        monkeypatch.setattr(evaluator, "_extract", extract)
        monkeypatch.setattr(evaluation_module.dist, "all_gather_cat", gather)
        got = evaluator.features(enc, "train", subset, neck=False)
        assert torch.equal(got, full)
        assert len(asked) == 1 and torch.equal(asked[0], torch.tensor_split(every, world)[rank])


def test_training_with_merged_index_equals_rebuilt_index(smoke_data, monkeypatch):
    """The online runs' cluster index kept by merging each relabel (as at 1.28M on a CPU) trains
    bitwise the same as rebuilding it (as at small banks): the merge gives the same index."""
    import study.method.labels as labels_module

    runs = {}
    real = labels_module.update_cluster_index
    for name, fraction in (("rebuild", 0.0), ("merge", 1.0)):
        monkeypatch.setattr(labels_module, "MERGE_MAX_FRACTION", fraction)
        merges = []
        monkeypatch.setattr(labels_module, "update_cluster_index", lambda *a: merges.append(1) or real(*a))
        t = Trainer(_cfg(epochs=2, sampling="semi-hard"), None, data=smoke_data, log=lambda s: None)
        final = t.run()
        runs[name] = (t, final, len(merges))
    (ta, fa, na), (tb, fb, nb) = runs["rebuild"], runs["merge"]
    assert na == 0 and nb > 0
    sa, sb = _state(ta), _state(tb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(ta.plabels.labels, tb.plabels.labels)
    assert torch.equal(ta.bank.feats, tb.bank.feats)
    timing = ("epoch_time", "pairs_per_s")
    assert {k: v for k, v in fa.items() if k not in timing} == {k: v for k, v in fb.items() if k not in timing}
