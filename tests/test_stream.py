"""An ImageFolder root streamed from disk (the ImageNet path) trains end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.core.config import build_config
from study.data.sources import FolderSource
from study.train.trainer import Trainer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 16)):
        for c, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n // 2):
                img = (np.array(colour) + rng.integers(-30, 30, (24 + i % 5, 20, 3))).clip(0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


def test_folder_source_batches(folder):
    src = FolderSource(str(folder), image_size=16, crop_scale=(0.3, 1.0), seed=0, workers=0)
    assert (src.num_train, src.num_test, src.num_classes) == (48, 16, 2)
    batches = [torch.arange(0, 8), torch.arange(8, 16)]
    views = list(src.train_batches(batches, epoch=0))
    assert len(views) == 2 and views[0][0].shape == (8, 3, 16, 16) and views[0][0].dtype == torch.uint8
    again = list(src.train_batches(batches, epoch=0))
    assert torch.equal(views[1][1], again[1][1])  # crops are a function of (seed, epoch, index)
    evals = list(src.eval_batches("test", None, 10))
    assert [e.shape[0] for e in evals] == [10, 6]


def test_streamed_imagefolder_trains(folder, tmp_path):
    cfg = build_config("smoke", {
        "dataset": "imagefolder", "data_root": str(folder), "stream": True, "image_size": 16,
        "train_subset": None, "test_subset": None, "batch_size": 8, "num_clusters": 4, "min_cluster": 2,
        "neg_num": 8, "pool": 16, "queue_size": 32, "knn_k": 5, "threads": 1,
    })
    final = Trainer(cfg, tmp_path, log=lambda s: None).run()
    assert 0.0 <= final["knn_top1"] <= 1.0 and "linear_top1" in final and "nmi" in final
    assert (tmp_path / "final.json").exists()
