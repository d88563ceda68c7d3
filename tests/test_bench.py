"""The benchmarks' correctness checks and a quick run of every benchmark at tiny sizes."""

from __future__ import annotations

import pytest
import torch

from bench import gpu, kmeans_bench, maintenance, pipeline, scheduler, step
from bench.__main__ import main
from bench.common import Goal, interleaved_times, visit_times
from bench.states import Stepper, build_trainer, inject_state, synthetic_data, synthetic_state
from study.data.datasets import epoch_batches

CHECKS = [
    step.check_search_modes,
    step.check_negative_gradients,
    step.check_intra_branch_unchanged,
    maintenance.check_relabel,
    maintenance.check_recompute_centroids,
    maintenance.check_fix_small_clusters,
    maintenance.check_cluster_index,
    kmeans_bench.check_against_faiss,
    kmeans_bench.check_labels_are_nearest,
    pipeline.check_pipeline,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_correctness_check_passes(check):
    result = check()
    assert result.passed, result.line()


def test_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    # Ray Tune has its own test below; the rest runs exactly as `python -m bench --quick`
    assert main(["--quick", "--skip", "scheduler", "--out", str(out)]) == 0
    text = out.read_text()
    for title in ("## Machine", "1. Step time", "2. Online label maintenance", "3. Offline k-means",
                  "4. Data pipeline", "6. GPU step", "ratio exact", "ratio cand.", "torch.profiler",
                  "Correctness checks:", "7. One `cpu` cell end to end", "start-up: bank init",
                  "8. Our MoCo v2 step against lightly", "lightly 1.6.0 loop", "model-only",
                  "9. Seeds to a decision", "group-sequential, pocock"):
        assert title in text, title
    assert "FAIL" not in text
    if not torch.cuda.is_available():
        assert "not run: no GPU" in text
    # the sweep's C of the bank's own candidates rows (128) is that row, not a second timing of it
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    cand_row = next(r for r in cells if r[:3] == ["512", "semi-hard", "online"])
    sweep_row = next(r for r in cells if len(r) == 5 and r[0] == "128")
    assert sweep_row[2:5] == cand_row[6:9], (sweep_row, cand_row)


def test_scheduler_quick_through_ray_tune():
    sec = scheduler.run(quick=True)
    assert all(c.passed for c in sec.checks), [c.line() for c in sec.checks]
    assert sec.data["fit_s"] > 0 and len(sec.data["trial_times"]) == scheduler.QUICK.trials


def test_bench_gpu_script_runs_tiny_on_cpu(tmp_path):
    """`make bench-gpu`'s script (python -m bench.gpu) at tiny sizes: the step part and the gpu-preset cell."""
    out = tmp_path / "gpu.md"
    assert gpu.main(["--tiny", "--time-limit", "300", "--out", str(out)]) == 0
    text = out.read_text()
    for title in ("MoCo v2 images/s", "InterCLR pairs/s", "`gpu`-preset cell end to end", "start-up: data + model",
                  "probe", "| total |"):
        assert title in text, title


def test_bench_gpu_script_without_cuda_fails_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """Without CUDA, `make bench-gpu` says why on stderr, exits 1, and leaves no half-made results file."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    out = tmp_path / "gpu.md"
    assert gpu.main(["--out", str(out)]) == 1
    assert "no GPU here" in capsys.readouterr().err and not out.exists()


def test_bench_gpu_script_checks_its_options_before_it_runs(tmp_path):
    """A bad --out or --time-limit is exit 2 at once, not after the benchmark has spent the GPU's time."""
    for argv in (["--tiny", "--out", str(tmp_path / "none" / "g.md")], ["--tiny", "--out", str(tmp_path)],
                 ["--tiny", "--time-limit", "0"], ["--tiny", "--time-limit", "-5"]):
        with pytest.raises(SystemExit) as err:
            gpu.main(argv)
        assert err.value.code == 2, argv
    assert list(tmp_path.iterdir()) == []


def test_peer_loop_learns_like_ours():
    """The peer's documented loop runs on our data and gives a MoCo loss of the same size as ours."""
    from bench import peer
    from bench.states import fashion_or_synthetic

    data, desc = fashion_or_synthetic(16, 512)
    res = peer.compare(data, desc, 32, repeats=1, warmup=0,
                       overrides={"widths": [8, 16, 32], "image_size": 16, "queue_size": 256})
    assert res["lightly"] is not None and res["ours_s"] > 0 and res["peer_s"] > 0 and res["peer_model_s"] > 0
    # InfoNCE over 1 positive + 256 queue negatives starts near log(257) = 5.55
    assert 3.0 < res["peer_loss"] < 8.0


def test_gpu_step_code_runs_tiny_on_cpu():
    res = gpu.step_throughput("cpu", gpu.TINY, time_limit=60)
    assert set(res["cells"]) == {"exact", "candidates"}
    assert all(c["ratio"] > 0 and c["moco_pairs_s"] > 0 for c in res["cells"].values())


def test_inject_state_swaps_in_a_larger_bank(monkeypatch):
    """The bank goes to the method, whose step the trainer runs: the sampler sees the row's bank, pool and
    negatives (it once went to the trainer's aliases, and the rows timed the dataset's bank)."""
    import dataclasses

    import study.method.interclr as interclr

    seen = []
    real = interclr.inter_sample

    def spy(q, idx, bank_feats, labels, index, sampling, neg_num, pool, *a, **k):
        seen.append((bank_feats.shape[0], labels.shape[0], neg_num, pool))
        return real(q, idx, bank_feats, labels, index, sampling, neg_num, pool, *a, **k)

    monkeypatch.setattr(interclr, "inter_sample", spy)
    data = synthetic_data(128, 16)
    t = build_trainer("cpu", {"widths": [8, 16, 32], "image_size": 16, "batch_size": 32, "queue_size": 64,
                              "min_cluster": 2, "num_clusters": 4, "neg_num": 16, "pool": 64}, data)
    state = synthetic_state("big", 1000, 20, seed=0)
    inject_state(t, state, pool=300)
    assert t.method.bank.feats.shape == (1000, 128) and t.method.plabels.num_clusters == 20
    assert t.bank is t.method.bank and t.plabels is t.method.plabels  # the trainer reads the method's
    assert t.method.inter.pool == 300 and t.cfg.pool == 300 and t.cfg.num_clusters == 20
    assert torch.equal(t.bank.feats, state.feats) and torch.equal(t.plabels.labels, state.labels)
    stepper = Stepper(t, epoch_batches(128, 32, 0, 0)[:1])
    stepper()
    assert t.step == 1 and stepper.acc.inter_steps == 1  # pinned at 0, then incremented by the step
    assert seen == [(1000, 1000, 16, 300)]
    # a timed step whose method holds another state than the row named is an error, not a number
    t.method.inter = dataclasses.replace(t.method.inter, pool=64)
    with pytest.raises(AssertionError, match="not the row's"):
        stepper()


def test_interleaved_times_alternates_order():
    calls = []
    interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a"]


def test_a_rewarmed_baseline_runs_untimed_after_its_neighbour_and_gets_its_samples():
    """``rewarm``: one untimed call before the timed ones whenever the other callable ran just before;
    ``per_round``: that many timed samples per round (a cheap baseline beside a slow step)."""
    calls, timed = [], []
    import bench.common as common

    real = common.time_call
    common.time_call = lambda fn: (timed.append(len(calls)), fn(), 0.0)[2]
    try:
        out = interleaved_times({"base": lambda: calls.append("base"), "big": lambda: calls.append("big")},
                                repeats=2, warmup=0, rewarm=("base",), per_round={"base": 3})
    finally:
        common.time_call = real
    # round 0: base (rewarm + 3 timed), big; round 1: big, base (rewarm + 3 timed)
    assert calls == ["base"] * 4 + ["big", "big"] + ["base"] * 4
    assert len(out["base"]) == 6 and len(out["big"]) == 2
    assert timed == [1, 2, 3, 4, 5, 7, 8, 9]  # the untimed rewarm calls are calls 0 and 6


def test_visit_times_mirrors_the_rows_order_and_pools_each_rows_samples():
    """Two visits: the rows in order, then reversed; each visit builds its row afresh; a row's samples pool."""
    built, calls = [], []

    def row(name):
        def factory():
            built.append(name)
            return ({"base": lambda: calls.append(name + ".base"), "step": lambda: calls.append(name + ".step")},
                    {"repeats": 1, "warmup": 0})
        return factory

    out = visit_times({"r1": row("r1"), "r2": row("r2"), "r3": row("r3")}, passes=2)
    assert built == ["r1", "r2", "r3", "r3", "r2", "r1"]
    # a visit of one round: the first pass times base then step, the second step then base
    assert calls[:2] == ["r1.base", "r1.step"] and calls[-2:] == ["r1.step", "r1.base"]
    assert {key: {name: len(t) for name, t in times.items()} for key, times in out.items()} == {
        key: {"base": 2, "step": 2} for key in ("r1", "r2", "r3")}
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="passes"):
            visit_times({"r1": row("r1")}, passes=bad)


def test_goal_direction():
    assert Goal("x", 1.05, 1.10).met is True
    assert Goal("x", 1.2, 1.10).met is False
    assert Goal("x", 2.0, 1.0, higher_is_better=True).met is True
    assert Goal("x", None, 1.0).met is None


def test_kmeans_inertia_recomputed_identically():
    x = synthetic_state("k", 500, 5, dim=8, seed=0).feats.numpy()
    res = kmeans_bench.compare(x, 5, 3, kmeans_bench.random_init(x, 5, 0), ("ours",))
    assert res["ours"]["inertia"] == pytest.approx(res["ours"]["reported"], rel=1e-5)


def test_full_scale_step_settings_are_ones_the_config_accepts():
    """Every InterCLR setting `make bench` builds at full scale passes the config's load-time checks.

    The quick run uses other sizes, so a full-scale setting that a config rule
    rejects (the effective semi-hard pool below neg_num, say) would only fail
    in `make bench` itself. And `sweep_sizes` keeps exactly the C the config
    accepts.
    """
    from bench.states import bench_config
    from study.core.errors import UserError

    scale, num_train = step.FULL, 60_000  # the Fashion-MNIST train set the full run uses
    for spec in scale.banks:
        for strategy in step.STRATEGIES:
            for labels in step.LABEL_MODES:
                for search in step.SEARCHES:
                    bench_config(scale.preset, {**scale.overrides, **step._inter_overrides(
                        spec, num_train, strategy, labels, search)}, num_train)
    first = scale.banks[0]
    kept = step.sweep_sizes(scale, first, num_train)
    assert kept == list(scale.sweep)  # the full sweep tries nothing the config would reject
    probe = step.StepScale(preset=scale.preset, sweep=(512, 1024, 2048, 2559, 2560, 3000, 4096))
    for c in probe.sweep:
        ov = {**scale.overrides, **step._inter_overrides(first, num_train, "semi-hard", "online", "candidates"),
              "candidates": c}
        try:
            bench_config(scale.preset, ov, num_train)
            accepted = True
        except UserError:
            accepted = False
        assert accepted == (c in step.sweep_sizes(probe, first, num_train)), c


def test_the_sequential_rules_and_the_cost_to_decide(tmp_path):
    """Section 9 at quick sizes: the chosen rule keeps its error, needs fewer seeds than the rule before, and
    the cost figure of the paper's four comparisons is drawn."""
    from bench import sequential

    sec = sequential.run(quick=True, shared={"figure_dir": str(tmp_path)})
    assert all(c.passed for c in sec.checks), [c.line() for c in sec.checks]
    assert all(g.met for g in sec.goals), [g.line() for g in sec.goals]
    cost = sec.data["cost"]
    assert [r["study"] for r in next(iter(cost.values()))] == ["labels", "sampling", "boundary", "final"]
    assert (tmp_path / "cost_to_decide.png").stat().st_size > 10_000
