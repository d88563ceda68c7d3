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
