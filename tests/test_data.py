"""Data sets, splits, augmentation and batching."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from recogen.data import DataOptions, create_dataset
from recogen.data.base import ImageSet, stratified_split
from recogen.data.batches import TensorBatches
from recogen.data.transforms import PRESETS, AugmentPreset, BatchAugment, to_v2
from recogen.errors import ConfigError, DataError, OfflineError


def test_digits_splits_are_seeded_stratified_and_disjoint():
    a = create_dataset("digits", DataOptions(seed=0))
    b = create_dataset("digits", DataOptions(seed=0))
    c = create_dataset("digits", DataOptions(seed=1))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.image_size == (32, 32) and a.channels == 1 and a.classes == [str(i) for i in range(10)]
    assert torch.equal(a.test.images, b.test.images) and not torch.equal(a.test.images, c.test.images)
    for s in (a.train, a.val, a.test):
        assert set(s.labels.tolist()) == set(range(10))  # every class in every split
    assert not a.hflip_ok  # a mirrored digit is not the same digit
    rows = {tuple(x.flatten().tolist()) for s in (a.train, a.val, a.test) for x in s.images}
    assert len(rows) >= 1797 - 5  # (sklearn's digits hold a few exact duplicates)


def test_size_channels_and_limit_options():
    d = create_dataset("digits", DataOptions(image_size=28, channels=3, limit=100))
    assert d.image_size == (28, 28) and d.channels == 3 and len(d.train) == 100


def test_stratified_split_fractions():
    labels = np.repeat(np.arange(4), 100)
    rest, val, test = stratified_split(labels, (0.2, 0.1), seed=0)
    assert (len(rest), len(val), len(test)) == (280, 80, 40)
    assert len(set(rest) | set(val) | set(test)) == 400


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data set 'digitz'. Did you mean digits"):
        create_dataset("digitz")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_downloadable_sets_fail_fast_offline_and_say_where_files_go(monkeypatch, tmp_path, name):
    def no_dns(*a, **k):
        raise socket.gaierror("offline (test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(OfflineError, match=str(tmp_path)):
        create_dataset(name, DataOptions(data_dir=tmp_path))


def test_batch_augment_keeps_shape_and_range_and_none_is_identity():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    for name, preset in PRESETS.items():
        y = BatchAugment(preset)(x.clone())
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name
    assert torch.equal(BatchAugment(PRESETS["none"])(x.clone()), x)
    assert not torch.allclose(BatchAugment(PRESETS["light"])(x.clone()), x)


def test_batch_augment_draws_per_sample_and_respects_hflip_ok():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    flip_only = AugmentPreset(hflip=True)
    y = BatchAugment(flip_only, hflip_ok=True)(x)
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54  # some flipped, some not: parameters are drawn per image
    assert torch.allclose(BatchAugment(flip_only, hflip_ok=False)(x), x)


def test_v2_pipeline_of_a_preset_runs_on_one_image():
    img = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    out = to_v2(PRESETS["strong"])(img)
    assert out.shape == (3, 32, 32)


def test_unknown_augment_preset():
    from recogen.data.transforms import get_preset

    with pytest.raises(ConfigError, match="none, light, strong"):
        get_preset("wild")


def test_tensor_batches_cover_each_image_once_per_epoch_in_a_seeded_order():
    ds = ImageSet(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100))
    tb = TensorBatches(ds, 32, shuffle=True, seed=0)
    e0 = torch.cat([y for _, y in tb])
    assert sorted(e0.tolist()) == list(range(100)) and len(tb) == 4
    tb.epoch = 1
    e1 = torch.cat([y for _, y in tb])
    tb.epoch = 0
    assert not torch.equal(e0, e1) and torch.equal(e0, torch.cat([y for _, y in tb]))
    assert len(TensorBatches(ds, 32, shuffle=True, drop_last=True)) == 3
