"""The names of the store's contract (study/core/names.py): what the Tune callback sends to MLflow."""

from study.core import names


def test_every_named_epoch_metric_is_sent_and_tunes_own_keys_are_not():
    result = {"loss": 1.0, "label_change_raw": 0.1, "starved_query_ratio": 0.0, "clusters_reseeded": 2.0,
              "neg_sim_q95": 0.5, "epoch": 3, "final": 0, "node": "n1", "training_iteration": 4,
              "time_this_iter_s": 1.2, "timestamp": 1, "trial_id": "x", "done": False}
    assert names.epoch_metrics(result) == {"loss": 1.0, "label_change_raw": 0.1, "starved_query_ratio": 0.0,
                                           "clusters_reseeded": 2.0, "neg_sim_q95": 0.5}


def test_each_name_is_in_one_place_with_a_unit_and_the_runs_that_record_it():
    every = [m.name for m in names.EPOCH_METRICS + names.EPOCH_PREFIXES]
    assert len(every) == len(set(every))
    assert all(m.unit and m.runs and m.meaning for m in names.EPOCH_METRICS + names.EPOCH_PREFIXES)
    assert not set(names.NOT_LOGGED) & set(every)
    assert names.named("knn_top1_monitor") and not names.named("knn_top1_monitor_typo")
    assert names.named("linear_top1", final=True) and not names.named("linear_top1")


def test_a_metric_named_in_the_contract_reaches_the_analysis_and_the_tables():
    """Adding a per-epoch metric is one line in study/core/names.py: a fresh interpreter whose contract
    holds a made-up metric (``table=True``, lower is better) finds it a cell column, a metric a study
    or hypothesis may name, a summary-table column marked best where lowest, and refused at load for
    the runs the contract says do not record it."""
    import subprocess
    import sys

    code = """
from study.core import names
names.EPOCH_METRICS = names.EPOCH_METRICS + (names.MetricName(
    "made_up_metric", "1", names.INTER, "a made-up metric", table=True, better="lower"),)
from analysis import hypotheses, load, tables
import numpy as np
assert load.CELL_COLUMNS["made_up_metric"] == "float"
assert "made_up_metric" in hypotheses.METRICS
assert "made_up_metric" in tables.TABLE_METRICS and tables.spec("made_up_metric").better == "lower"
assert list(tables.mark_best(np.array([3.0, 1.0, 2.0]), "lower")) == [False, True, False]
from study.core.config import build_config
from study.studyfile import metric_unrecorded
assert metric_unrecorded("made_up_metric", build_config("smoke", {"method": "interclr"})) is None
assert "InterCLR runs" in metric_unrecorded("made_up_metric", build_config("smoke", {"method": "mocov2"}))
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_tag_names_are_read_and_written_through_the_contract():
    """No module indexes a run's tags with a literal name or writes a role filter by hand: the tag
    names live in study/core/names.py (``Tag``, ``factor_tag``, ``role_filter``)."""
    import re
    from pathlib import Path

    from study.core.paths import REPO_ROOT

    literal = re.compile(r"""tags(\.get\(|\[)\s*f?["'](?!\{)|tags\.role\s*=|["']factor\.\{""")
    found = []
    for top in ("study", "analysis", "cluster"):
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            if path == REPO_ROOT / "study" / "core" / "names.py":
                continue
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if literal.search(line):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{no}: {line.strip()}")
    assert found == [], "\n".join(found)
    assert names.role_filter(names.Tag.CELL) == "tags.role = 'cell'"
    assert names.factor_tag("labels") == "factor.labels"
    values = [v for k, v in vars(names.Tag).items() if k.isupper() and k not in ("CELL", "PARENT")]
    assert len(values) == len(set(values))


def test_every_final_accuracy_has_its_unit_in_the_contract():
    """The final metrics stored as fractions are named in one place (names.FRACTION_FINALS): every final
    accuracy and NMI, no cost in seconds."""
    from study.core import names

    finals = set(names.FINAL_METRICS.values())
    fractions = {m for m in finals if m.endswith("_top1") or m.endswith("nmi")}
    assert fractions == set(names.FRACTION_FINALS)
    assert not set(names.FRACTION_FINALS) & set(names.PROTOCOL_SECONDS)
