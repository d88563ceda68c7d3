"""The run config: strict schema, presets, --set parsing, data-size invariants."""

import pytest

from study.config import PRESETS, TrainConfig, build_config, parse_sets, validate_against_data
from study.errors import UserError


def test_presets_all_validate():
    for name in PRESETS:
        cfg = build_config(name)
        assert isinstance(cfg, TrainConfig)


def test_defaults_follow_the_reference():
    cfg = build_config()
    assert (cfg.temperature, cfg.queue_size, cfg.key_momentum) == (0.2, 65536, 0.999)
    assert (cfg.intra_weight, cfg.inter_weight) == (0.75, 0.25)
    assert (cfg.margin_type, cfg.margin, cfg.sampling, cfg.labels) == ("cosine", -0.5, "semi-hard", "online")
    assert (cfg.neg_num, cfg.pool, cfg.num_clusters, cfg.min_cluster) == (16384, 128000, 10000, 20)


def test_set_parses_yaml_scalars():
    out = parse_sets(["margin=-0.5", "epochs=3", "sampling=hard", "widths=[8, 16]", "progress=false"])
    assert out == {"margin": -0.5, "epochs": 3, "sampling": "hard", "widths": [8, 16], "progress": False}
    assert build_config("smoke", {"margin": 0}).margin == 0.0  # int accepted for a float key


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        ({"sampling": "hardest"}, "sampling", ["'semi-hard'", "'hard'"]),
        ({"labels": "sometimes"}, "labels", ["'online'", "'offline'"]),
        ({"margin_type": "angular"}, "margin_type", ["'arc'"]),
        ({"neg_num": 0}, "neg_num", ["greater than or equal to 1"]),
        ({"neg_num": 100, "pool": 10}, "pool", [">= neg_num"]),
        ({"epochs": "three"}, "epochs", ["integer"]),
        ({"epochs": 2.5}, "epochs", ["integer"]),
        ({"margin": "big"}, "margin", ["number"]),
    ],
)
def test_bad_values_name_the_key(overrides, key, words):
    with pytest.raises(UserError) as err:
        build_config("cpu", overrides)
    msg = str(err.value)
    assert f"'{key}'" in msg
    for w in words:
        assert w in msg


def test_unknown_key_suggests():
    with pytest.raises(UserError, match=r"key 'negnum'.*did you mean 'neg_num'"):
        parse_sets(["negnum=3"])
    with pytest.raises(UserError, match="expected key=value"):
        parse_sets(["epochs"])
    with pytest.raises(UserError, match="unknown preset 'cpuu'.*did you mean 'cpu'"):
        build_config("cpuu")


def test_data_size_invariants():
    cfg = build_config("smoke", {"num_clusters": 50, "batch_size": 8})
    with pytest.raises(UserError, match="'num_clusters'.*exceeds"):
        validate_against_data(cfg, 40)
    with pytest.raises(UserError, match="'min_cluster'"):
        validate_against_data(build_config("smoke", {"num_clusters": 10, "min_cluster": 20}), 100)
    with pytest.raises(UserError, match="'pool'"):
        validate_against_data(build_config("smoke", {"batch_size": 8, "num_clusters": 2, "min_cluster": 1}), 200)
    validate_against_data(build_config("smoke"), 1024)  # the smoke preset fits its data


def test_config_is_frozen_and_flat():
    cfg = build_config("smoke")
    with pytest.raises(Exception):
        cfg.epochs = 3  # type: ignore[misc]
    flat = cfg.flat()
    assert flat["sampling"] == cfg.sampling and flat["widths"] == list(cfg.widths)


def test_config_choices_are_the_method_registries():
    """One place per rule: the config's sampling and margin choices are the method's registries."""
    from typing import get_args

    from study.config import POOL_SAMPLINGS, MarginType, Sampling
    from study.method.losses import MARGINS
    from study.method.sampling import SAMPLERS

    assert set(get_args(Sampling)) == set(SAMPLERS)
    assert set(POOL_SAMPLINGS) == {name for name, sampler in SAMPLERS.items() if sampler.uses_pool}
    assert set(get_args(MarginType)) == set(MARGINS)
