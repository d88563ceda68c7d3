"""Tests of dataset loading, subsets and batch order (study.data)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from study.data.augment import AugmentConfig, TwoViewAugment
from study.data.datasets import (
    DATASETS,
    FolderTwoViewDataset,
    ImageData,
    TensorTwoViewDataset,
    channel_stats,
    epoch_batches,
    load_dataset,
    mix_seed,
    read_idx,
    resize_images,
    stratified_subset,
)
from study.core.errors import DataError, UserError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# --- helpers that write tiny datasets ------------------------------------------


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """IDX: two zero bytes, type 0x08 (ubyte), ndim, big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_fake_fashion(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)


# --- IDX / Fashion-MNIST ----------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, gz)
    got = read_idx(path)
    assert got.shape == (2, 3, 4) and got.dtype == np.uint8
    assert np.array_equal(got, array)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_raises_data_error_naming_the_file(tmp_path, gz):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), gz)
    path.write_bytes(path.read_bytes()[:-30])  # cut the tail (of the data or of the gzip stream)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_bad_magic_raises_data_error(tmp_path):
    path = tmp_path / "junk-idx1-ubyte"
    path.write_bytes(b"\x01\x02\x03\x04" + bytes(10))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_fake_fashion_mnist_loads_from_given_root(tmp_path):
    write_fake_fashion(tmp_path / "fm", gz=False)
    data = load_dataset("fashion_mnist", root=str(tmp_path / "fm"))
    assert data.train_images.shape == (40, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (20, 1, 28, 28)
    assert data.train_labels.dtype == torch.long and data.num_classes == 10
    assert len(data.classes) == 10 and len(data.mean) == 1 and 0 < data.std[0] < 1


def test_missing_root_raises_data_error_with_path_and_install_hint(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", root=str(missing))
    message = str(info.value)
    assert str(missing) in message and "apt-get install dataset-fashion-mnist" in message
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    # a folder that exists (the study file's check at load passes) but holds no dataset: found when a
    # cell loads its data, with the folder named (the error a failed cell's run is tagged with)
    empty = tmp_path / "nodata"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", root=str(empty))
    assert str(empty) in str(info.value)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason=f"{FMNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_loads():
    data = load_dataset("fashion_mnist", root=str(FMNIST_DIR))
    assert data.train_images.shape == (60000, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10 and data.train_labels.max() == 9 and data.train_labels.min() == 0
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    # The well-known statistics of the train split.
    assert abs(data.mean[0] - 0.2860) < 1e-3 and abs(data.std[0] - 0.3530) < 1e-3

    small = load_dataset("fashion_mnist", root=str(FMNIST_DIR), train_subset=2000, test_subset=500, image_size=16)
    assert small.train_images.shape == (2000, 1, 16, 16) and small.test_images.shape == (500, 1, 16, 16)
    assert torch.bincount(small.train_labels).tolist() == [200] * 10
    assert torch.bincount(small.test_labels).tolist() == [50] * 10


# --- subsets, resizing, statistics --------------------------------------------------


def test_stratified_subset_size_balance_and_seed():
    labels = torch.cat([torch.full((100,), 0), torch.full((50,), 1), torch.full((30,), 2)])
    labels = labels[torch.randperm(180, generator=torch.Generator().manual_seed(0))]
    idx = stratified_subset(labels, 36, seed=3)
    assert idx.shape == (36,) and idx.unique().numel() == 36
    assert torch.all(idx[1:] > idx[:-1])  # sorted: keeps the original order
    assert torch.bincount(labels[idx]).tolist() == [20, 10, 6]  # proportional to the class sizes
    assert torch.equal(idx, stratified_subset(labels, 36, seed=3))
    assert not torch.equal(idx, stratified_subset(labels, 36, seed=4))
    # Shares 5.56, 2.78, 1.67: floors 5, 2, 1, and the 2 leftovers go to the
    # largest remainders (0.78, 0.67).
    assert torch.bincount(labels[stratified_subset(labels, 10, seed=0)]).tolist() == [5, 3, 2]
    with pytest.raises(UserError) as info:
        stratified_subset(labels, 181, seed=0, key="train_subset")
    assert info.value.key == "train_subset"


def test_load_dataset_subset_and_resize(tmp_path):
    write_fake_fashion(tmp_path / "fm", n_train=100, n_test=50)
    data = load_dataset("fashion_mnist", root=str(tmp_path / "fm"), train_subset=30, test_subset=20, image_size=12)
    assert data.train_images.shape == (30, 1, 12, 12) and data.test_images.shape == (20, 1, 12, 12)
    assert torch.bincount(data.train_labels).tolist() == [3] * 10
    assert torch.bincount(data.test_labels).tolist() == [2] * 10
    with pytest.raises(UserError) as info:
        load_dataset("fashion_mnist", root=str(tmp_path / "fm"), train_subset=0)
    assert info.value.key == "train_subset"
    with pytest.raises(UserError) as info:
        load_dataset("emnist")
    assert info.value.key == "dataset" and "fashion_mnist" in str(info.value)


def test_resize_images_antialiased_and_constant_preserving():
    const = torch.full((3, 2, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(const, 16), torch.full((3, 2, 16, 16), 77, dtype=torch.uint8))
    # A fine checkerboard shrunk 2x averages to grey instead of aliasing.
    board = ((torch.arange(28).view(-1, 1) + torch.arange(28)) % 2 * 255).to(torch.uint8).view(1, 1, 28, 28)
    small = resize_images(board, 14).float()
    assert (small - 127.5).abs().max() < 3  # (the corners see a one-sided filter)
    wide = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    assert resize_images(wide, 10).shape == (1, 3, 10, 10)


def test_channel_stats_in_unit_range():
    x = torch.zeros(4, 2, 8, 8, dtype=torch.uint8)
    x[:, 1] = 255
    x[:2, 0] = 102  # channel 0: half at 0.4, half at 0
    mean, std = channel_stats(x)
    assert mean[0] == pytest.approx(0.2) and std[0] == pytest.approx(0.2)
    assert mean[1] == pytest.approx(1.0) and std[1] > 0  # constant channel: std floored, not 0


# --- batch order ---------------------------------------------------------------------


def test_epoch_batches_deterministic_and_covering():
    a = epoch_batches(1000, 64, seed=1, epoch=3)
    b = epoch_batches(1000, 64, seed=1, epoch=3)
    assert len(a) == 1000 // 64 and all(x.shape == (64,) and x.dtype == torch.long for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], epoch_batches(1000, 64, seed=1, epoch=4)[0])  # another epoch
    assert not torch.equal(a[0], epoch_batches(1000, 64, seed=2, epoch=3)[0])  # another seed
    # No index twice; with drop_last=False every index exactly once.
    seen = torch.cat(a)
    assert seen.unique().numel() == seen.numel()
    full = torch.cat(epoch_batches(1000, 64, seed=1, epoch=3, drop_last=False))
    assert torch.equal(full.sort().values, torch.arange(1000))
    torch.manual_seed(0)  # the global RNG plays no part
    assert torch.equal(epoch_batches(1000, 64, seed=1, epoch=3)[5], a[5])


def test_epoch_batches_rank_slices_concatenate_to_the_global_batch():
    world = 4
    global_batches = epoch_batches(1000, 64, seed=5, epoch=2)
    per_rank = [epoch_batches(1000, 64, seed=5, epoch=2, rank=r, world_size=world) for r in range(world)]
    for step, batch in enumerate(global_batches):
        parts = [per_rank[r][step] for r in range(world)]
        assert all(p.shape == (16,) for p in parts)
        assert torch.equal(torch.cat(parts), batch)
    # The short last batch is split across ranks when kept.
    tails = [epoch_batches(1000, 64, 5, 2, drop_last=False, rank=r, world_size=world)[-1] for r in range(world)]
    assert sum(t.numel() for t in tails) == 1000 % 64


def test_epoch_batches_rejects_bad_sizes():
    with pytest.raises(UserError) as info:
        epoch_batches(1000, 66, seed=0, epoch=0, world_size=4)
    assert info.value.key == "batch_size"
    with pytest.raises(UserError) as info:
        epoch_batches(10, 64, seed=0, epoch=0)
    assert info.value.key == "batch_size"
    with pytest.raises(UserError):
        epoch_batches(100, 8, seed=0, epoch=0, rank=2, world_size=2)


def test_mix_seed_separates_tuples():
    assert mix_seed(1, 2) == mix_seed(1, 2)
    assert len({mix_seed(s, e) for s in range(20) for e in range(20)}) == 400
    assert 0 <= mix_seed(-1, 3) < 2**63


# --- CIFAR-10 and STL-10 on tiny fake files ---------------------------------------------


def test_cifar10_reader_on_fake_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)

    def dump(name, n, offset):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(n) + offset  # red, top-left pixel: a per-image tag
        data[:, 1024] = 200  # green, top-left pixel
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": [int(i % 10) for i in range(n)]}, fh)

    for i in range(1, 6):
        dump(f"data_batch_{i}", 4, 10 * i)
    dump("test_batch", 3, 0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names}, fh)

    data = load_dataset("cifar10", root=str(tmp_path))
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    assert data.train_images[:4, 0, 0, 0].tolist() == [10, 11, 12, 13]  # batch order kept
    assert (data.train_images[:, 1, 0, 0] == 200).all()  # planes are R, G, B
    assert data.classes[0] == "airplane" and data.num_classes == 10 and len(data.mean) == 3


def test_cifar10_missing_names_url_and_layout(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message and str(tmp_path) in message


def write_stl(path: Path, images: np.ndarray) -> None:
    """(N, 3, 96, 96) [n, c, y, x] -> STL-10's layout: each channel column-major."""
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def test_stl10_reader_on_fake_binaries(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    train[:, :, 0, 5] = 250  # row 0, column 5: checks the column-major transpose
    train[:, :, 5, 0] = 3
    write_stl(folder / "train_X.bin", train)
    (folder / "train_y.bin").write_bytes(bytes([1, 2, 10]))
    write_stl(folder / "test_X.bin", train[:2])
    (folder / "test_y.bin").write_bytes(bytes([3, 4]))
    write_stl(folder / "unlabeled_X.bin", train[:2])

    data = load_dataset("stl10", root=str(tmp_path))
    assert data.train_images.shape == (3, 3, 96, 96)
    assert torch.equal(data.train_images, torch.from_numpy(train))
    assert data.train_labels.tolist() == [0, 1, 9] and data.test_labels.tolist() == [2, 3]
    assert data.classes is None  # no class_names.txt

    both = load_dataset("stl10", root=str(tmp_path), unlabeled=True, image_size=32)
    assert both.train_images.shape == (5, 3, 32, 32) and both.test_images.shape == (2, 3, 32, 32)
    assert both.train_labels.tolist() == [0, 1, 9, -1, -1]
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", root=str(tmp_path), unlabeled=True)
    assert info.value.key == "unlabeled"

    (folder / "test_X.bin").write_bytes(b"\0" * 100)  # not a whole image
    with pytest.raises(DataError, match="test_X.bin"):
        load_dataset("stl10", root=str(tmp_path))


def test_stl10_missing_names_layout(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("stl10", root=str(tmp_path))
    assert "stl10_binary" in str(info.value) and "train_X.bin" in str(info.value)


# --- ImageFolder ----------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, per_class in (("train", 3), ("val", 2)):
        for label, name in enumerate(["cat", "dog"]):
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                h, w = 20 + 4 * i, 30 - 2 * i  # sizes vary, as in ImageNet
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., 0] = 40 + 150 * label  # red tells the class
                Image.fromarray(pixels).save(d / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_in_memory(image_folder):
    data = load_dataset("imagefolder", root=str(image_folder), image_size=8)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2
    assert data.train_images.shape == (6, 3, 8, 8) and data.test_images.shape == (4, 3, 8, 8)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    red = data.train_images[:, 0].float().mean(dim=(1, 2))
    assert (red[:3] - 40).abs().max() < 2 and (red[3:] - 190).abs().max() < 2
    with pytest.raises(UserError) as info:
        load_dataset("imagefolder", root=str(image_folder))
    assert info.value.key == "image_size"


def test_imagefolder_missing_split_names_layout(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert "val/" in str(info.value) and str(tmp_path) in str(info.value)


def test_folder_two_view_dataset(image_folder):
    ds = FolderTwoViewDataset(image_folder, split="train", out_size=12, seed=1)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    (v1, v2), index, label = ds[4]
    assert v1.shape == (3, 12, 12) and v2.shape == (3, 12, 12) and v1.dtype == torch.uint8
    assert index == 4 and label == 1
    assert not torch.equal(v1, v2)
    # Deterministic in (seed, epoch, index), whatever the worker or order.
    again = ds[4][0][0]
    assert torch.equal(v1, again) and torch.equal(ds[(0, 4)][0][0], v1)
    ds.set_epoch(1)
    assert not torch.equal(ds[4][0][0], v1)
    val = FolderTwoViewDataset(image_folder, split="val", out_size=12)
    assert len(val) == 4 and val[3][2] == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    (b1, b2), idx, lab = next(iter(loader))
    assert b1.shape == (3, 3, 12, 12) and idx.tolist() == [0, 1, 2] and lab.tolist() == [0, 0, 0]
    with pytest.raises(DataError):
        FolderTwoViewDataset(image_folder, split="test")


def test_tensor_two_view_dataset(tmp_path):
    write_fake_fashion(tmp_path / "fm")
    data = load_dataset("fashion_mnist", root=str(tmp_path / "fm"))
    aug = TwoViewAugment(AugmentConfig(out_size=16, mean=data.mean, std=data.std))
    ds = TensorTwoViewDataset(data, aug, seed=0)
    (v1, v2), index, label = ds[7]
    assert v1.shape == (1, 16, 16) and v1.dtype == torch.float32 and index == 7 and label == 7
    assert torch.equal(ds[7][0][1], v2)
    ds.set_epoch(2)
    assert not torch.equal(ds[7][0][0], v1)


def test_image_data_fields():
    assert DATASETS[:4] == ("fashion_mnist", "cifar10", "stl10", "imagefolder")  # new formats may follow
    d = ImageData(
        "x", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
        torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), 1, (0.5,), (0.5,),
    )  # fmt: skip
    assert d.classes is None and d.channels == 1 and d.image_size == 4 and "2 train" in d.summary()
