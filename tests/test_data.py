from collections import Counter

import pytest
import torch

from training import data

LOADERS = [data.breast_cancer, data.digits_images, data.digits_rows]
SPLITS = ("train", "val", "test")


@pytest.mark.parametrize("load", LOADERS)
def test_splits_are_disjoint_and_cover_every_row(load):
    ds = load()
    indices = [set(getattr(ds, s).index.tolist()) for s in SPLITS]
    assert not indices[0] & indices[1] and not indices[0] & indices[2]
    assert not indices[1] & indices[2]
    total = sum(len(i) for i in indices)
    assert set().union(*indices) == set(range(total))
    assert len(ds.test.y) == pytest.approx(total * data.TEST_FRACTION, abs=1)


@pytest.mark.parametrize("load", LOADERS)
def test_splits_are_stratified(load):
    ds = load()
    every = torch.cat([getattr(ds, s).y for s in SPLITS])
    share = {c: n / len(every) for c, n in Counter(every.tolist()).items()}
    for s in SPLITS:
        y = getattr(ds, s).y
        counts = Counter(y.tolist())
        for cls, p in share.items():
            # Stratified: each class's count is its overall share of the split, give or take one.
            assert abs(counts[cls] - p * len(y)) <= 1.0, (s, cls, counts[cls], p * len(y))


@pytest.mark.parametrize("load", LOADERS)
def test_splits_are_reproducible(load):
    a, b = load(), load()
    for s in SPLITS:
        assert torch.equal(getattr(a, s).index, getattr(b, s).index)
        assert torch.equal(getattr(a, s).x, getattr(b, s).x)


def test_inputs_stay_raw():
    cancer, digits = data.breast_cancer(), data.digits_images()
    assert cancer.train.x.shape[1:] == (30,) and cancer.train.x.max() > 1000  # mean area
    assert digits.train.x.shape[1:] == (1, 8, 8)
    assert digits.train.x.min() == 0 and digits.train.x.max() == 16
    assert data.digits_rows().train.x.shape[1:] == (8, 8)
    assert cancer.labels == ("malignant", "benign") and cancer.task == "binary"
    assert digits.labels == tuple("0123456789") and digits.task == "multiclass"
