"""The run config: strict schema, presets, --set parsing, data-size invariants."""

import pytest

from study.core.config import PRESETS, TrainConfig, build_config, parse_sets, validate_against_data
from study.core.errors import UserError


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


def test_config_choices_are_derived_from_the_registries():
    """Each choice is named once, in its registry; the config's types and derived values read them."""
    from typing import get_args

    from study.core import config
    from study.core.datasets import DATASETS
    from study.method.registry import MARGINS, SAMPLERS
    from study.method.registry import METHODS

    fields = config.TrainConfig.model_fields
    for key, registry in (("method", METHODS), ("sampling", SAMPLERS), ("margin_type", MARGINS),
                          ("intra_margin_type", MARGINS), ("dataset", DATASETS)):
        assert get_args(fields[key].annotation) == tuple(registry), key
    # the paper's pool strategies and the built-in datasets' sizes are there; a newcomer's entries
    # may be added beside them (one registry line each, nothing here to edit)
    assert config.POOL_SAMPLINGS == tuple(name for name, s in SAMPLERS.items() if s.uses_pool)
    assert {"semi-easy", "semi-hard"} <= set(config.POOL_SAMPLINGS) and not {"random", "hard"} & set(config.POOL_SAMPLINGS)
    assert config.TRAIN_SIZES == {name: d.train_size for name, d in DATASETS.items() if d.train_size is not None}
    assert {"fashion_mnist": 60000, "cifar10": 50000, "stl10": 5000}.items() <= config.TRAIN_SIZES.items()
    assert build_config("smoke", {"method": "mocov2"}).inter_enabled is False
    # a global top-k strategy searches the whole bank whatever neg_search says
    cfg = build_config("smoke", {"sampling": "hard", "neg_search": "candidates", "candidates": 100})
    assert cfg.search_size(1024) == 1024
    assert build_config("smoke", {"sampling": "random", "neg_search": "candidates",
                                  "candidates": 100}).search_size(1024) == 100