"""A tiny MLflow store with known values, written exactly as the training side does.

`build_store(uri)` creates four studies plus a study whose only cell failed:

- labels:   offline vs online, seeds 0-2; online wins by 0.03 +- 0.01 (a clear win).
- sampling: random, semi-easy, semi-hard, hard. semi-hard vs hard differ by noise.
            semi-hard seed 0 also has an older finished duplicate (knn 0.10, must be dropped);
            hard seed 2 failed once, then finished under the same cell_id (counted);
            random seed 2 only FAILED and semi-easy seed 2 never ran (both missing).
- boundary: cosine +0.5, 0, -0.5, -1 and arc +0.3; cosine -0.5 wins clearly;
            every cell of cosine -0.25 failed.
            labels also holds an older finished cell of preset "cpu" (knn 0.99, left out).
- final:    InterCLR vs MoCo v2; MoCo v2 wins by 0.05 +- 0.01 (a clear loss for the paper);
            InterCLR seed 1 also has an older finished run under another cell_id (knn 0.20, superseded).
- ghost:    one FAILED cell, nothing finished.

Every cell's linear_top1 is its kNN top-1 + 0.05; its final NMI is 0.5 + 0.01 * seed
(InterCLR only); curves run linearly from epoch 0 (kNN 0.6) to epoch EPOCHS.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

EPOCHS = 3
T0 = 1_700_000_000_000  # fixed timestamps (ms) keep the store itself reproducible

KNN = {
    "labels": {"offline": [0.70, 0.71, 0.72], "online": [0.73, 0.75, 0.74]},
    "sampling": {"random": [0.66, 0.68], "semi-easy": [0.62, 0.64], "semi-hard": [0.70, 0.72, 0.74],
                 "hard": [0.71, 0.69, 0.73]},
    "boundary": {"cosine +0.5": [0.60, 0.62, 0.61], "cosine 0": [0.71, 0.73, 0.72],
                 "cosine -0.5": [0.74, 0.75, 0.76], "cosine -1": [0.70, 0.70, 0.71], "arc +0.3": [0.65, 0.66, 0.64]},
    "final": {"InterCLR": [0.70, 0.71, 0.72], "MoCo v2": [0.75, 0.77, 0.76]},
}
# per level: (factor name, params that identify it)
LEVEL_PARAMS = {
    "offline": {"labels": "offline"}, "online": {"labels": "online"},
    "random": {"sampling": "random"}, "semi-easy": {"sampling": "semi-easy"},
    "semi-hard": {"sampling": "semi-hard"}, "hard": {"sampling": "hard"},
    "cosine +0.5": {"margin_type": "cosine", "margin": "0.5"}, "cosine 0": {"margin_type": "cosine", "margin": "0.0"},
    "cosine -0.5": {"margin_type": "cosine", "margin": "-0.5"},
    "cosine -1": {"margin_type": "cosine", "margin": "-1.0"},
    "cosine -0.25": {"margin_type": "cosine", "margin": "-0.25"},
    "arc +0.3": {"margin_type": "arc", "margin": "0.3"},
    "InterCLR": {"method": "interclr"}, "MoCo v2": {"method": "mocov2"},
}
FACTOR = {"labels": "labels", "sampling": "sampling", "boundary": "boundary", "final": "method"}
BASE = {"method": "interclr", "labels": "online", "sampling": "semi-hard", "margin_type": "cosine",
        "margin": "-0.5", "epochs": str(EPOCHS), "batch_size": "256", "temperature": "0.2"}
# last-epoch negative similarity quantiles per sampling level (q05, q25, q50, q75, q95)
NEG_Q = {"random": (-0.3, -0.1, 0.0, 0.1, 0.3), "semi-easy": (-0.6, -0.5, -0.4, -0.3, -0.2),
         "semi-hard": (0.3, 0.4, 0.5, 0.6, 0.7), "hard": (0.6, 0.7, 0.8, 0.85, 0.9)}


def cell_id(study: str, level: str, seed: int) -> str:
    return hashlib.sha1(f"{study}|{level}|{seed}".encode()).hexdigest()[:12]


def _metrics(study: str, level: str, knn: float, seed: int, t: int) -> list[Metric]:
    inter = LEVEL_PARAMS[level].get("method", "interclr") == "interclr"
    out = []
    for e in range(EPOCHS + 1):
        frac = e / EPOCHS
        vals = {"knn_top1": 0.6 + (knn - 0.6) * frac}
        if inter:
            vals["nmi"] = 0.3 + (0.2 + 0.01 * seed) * frac
            vals["ari"] = 0.1 + 0.1 * frac
        vals["clusters_nonempty"] = 50.0
        if e >= 1:
            vals.update({"loss": 5.0 - e, "loss_intra": 5.0 - e, "lr": 0.06 * (1 - frac), "epoch_time": 1.0,
                         "pairs_per_s": 800.0, "pos_sim_mean": 0.5})
            if inter:
                q = NEG_Q.get(level, (-0.2, 0.0, 0.1, 0.2, 0.4))
                shift = 0.1 * (1 - frac)  # quantiles drift towards their last-epoch values
                vals.update({"loss_inter": 6.0 - e, "label_change_ratio": (0.3 if level == "offline" else 0.1) / e,
                             "neg_sim_mean": q[2] - shift, "neg_sim_std": 0.1})
                for name, v in zip(("q05", "q25", "q50", "q75", "q95"), q):
                    vals[f"neg_sim_{name}"] = v - shift
        out += [Metric(k, float(v), t + e, e) for k, v in vals.items()]
    out += [Metric("linear_top1", knn + 0.05, t + EPOCHS + 1, EPOCHS),
            Metric("final_knn_top1", knn, t + EPOCHS + 1, EPOCHS)]
    return out


def add_cell(client: MlflowClient, exp_id: str, parent_id: str, study: str, level: str, seed: int, knn: float,
             status: str = "FINISHED", t: int = T0, cid: str | None = None, preset: str = "smoke") -> str:
    factor = FACTOR.get(study.split("-")[-1], "sampling")
    params = {**BASE, **LEVEL_PARAMS[level], "seed": str(seed)}
    tags = {"study": study, "role": "cell", "cell_id": cid or cell_id(study, level, seed), "preset": preset,
            "mlflow.parentRunId": parent_id, "level": level, "factors": factor, f"factor.{factor}": level}
    run = client.create_run(exp_id, start_time=t, tags=tags, run_name=f"{level} s{seed}")
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])
    if status == "FINISHED":
        client.log_batch(rid, metrics=_metrics(study, level, knn, seed, t))
    else:
        client.log_batch(rid, metrics=[Metric("knn_top1", 0.6, t, 0)])
    if status != "RUNNING":
        client.set_terminated(rid, status=status, end_time=t + 100)
    return rid


def artifact_location(uri: str, study: str) -> str:
    """Artifacts beside the sqlite file (MLflow's default would be ./mlruns in the working directory)."""
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts" / study).as_uri()


def add_study(client: MlflowClient, study: str, knn: dict[str, list[float]],
              metric: str = "knn_top1") -> tuple[str, str]:
    exp_id = client.create_experiment(study, artifact_location=artifact_location(client.tracking_uri, study))
    factor = FACTOR.get(study.split("-")[-1], "sampling")
    parent = client.create_run(exp_id, start_time=T0, tags={"study": study, "role": "parent"}, run_name=study)
    client.log_batch(parent.info.run_id, params=[Param("factors", factor), Param("metric", metric)])
    t = T0 + 1000
    for level, values in knn.items():
        for seed, v in enumerate(values):
            add_cell(client, exp_id, parent.info.run_id, study, level, seed, v, t=t)
            t += 1000
    client.set_terminated(parent.info.run_id, end_time=t)
    return exp_id, parent.info.run_id


def build_store(uri: str) -> MlflowClient:
    client = MlflowClient(tracking_uri=uri)
    for study, knn in KNN.items():
        exp_id, parent = add_study(client, study, knn)
        if study == "sampling":
            # an older finished duplicate of semi-hard seed 0: dropped for the newer one
            add_cell(client, exp_id, parent, study, "semi-hard", 0, 0.10, t=T0 - 10_000)
            # hard seed 2 failed before it finished (same cell_id): counted once
            add_cell(client, exp_id, parent, study, "hard", 2, 0.0, status="FAILED", t=T0 - 5_000)
            # random seed 2 only failed: missing
            add_cell(client, exp_id, parent, study, "random", 2, 0.0, status="FAILED", t=T0 + 500_000)
        if study == "boundary":
            # a level whose every cell failed: a row with n=0, listed as missing
            for seed in range(3):
                add_cell(client, exp_id, parent, study, "cosine -0.25", seed, 0.0, status="FAILED", t=T0 + 600_000)
        if study == "labels":
            # an older run of the study under another preset (another cell_id): left out
            add_cell(client, exp_id, parent, study, "online", 0, 0.99, t=T0 - 20_000, cid="cpu-online-0",
                     preset="cpu")
        if study == "final":
            # InterCLR seed 1 re-run under a new config (new cell_id): the older run is superseded
            add_cell(client, exp_id, parent, study, "InterCLR", 1, 0.20, t=T0 - 30_000, cid="old-interclr-1")
    exp_id = client.create_experiment("ghost", artifact_location=artifact_location(uri, "ghost"))
    parent = client.create_run(exp_id, start_time=T0, tags={"study": "ghost", "role": "parent"})
    client.log_batch(parent.info.run_id, params=[Param("factors", "sampling"), Param("metric", "knn_top1")])
    add_cell(client, exp_id, parent.info.run_id, "ghost", "hard", 0, 0.0, status="FAILED")
    return client


_CACHE: dict[str, str] = {}


def shared_store(tmp_path_factory) -> str:
    """The URI of one store per test session (creating a sqlite store costs seconds)."""
    if "uri" not in _CACHE:
        path = tmp_path_factory.mktemp("analysis_store") / "mlflow.db"
        uri = f"sqlite:///{path}"
        build_store(uri)
        _CACHE["uri"] = uri
    return _CACHE["uri"]
