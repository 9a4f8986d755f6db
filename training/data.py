"""The bundled data sets (scikit-learn ships them: nothing is downloaded), split once.

Inputs stay raw, as a user of the served model has them (the 30 breast-cancer measurements,
digit pixels 0-16): the models standardise inside their graph.
"""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split
from torch import Tensor

SPLIT_SEED = 0  # fixed: every run and every model sees the same train/validation/test rows
TEST_FRACTION = 0.2  # held out; never trained on, never used for early stopping
VAL_FRACTION = 0.2  # of what remains after the test split: early stopping and model choice


@dataclass(frozen=True)
class Split:
    x: Tensor  # (N, *input_shape) float32, raw values
    y: Tensor  # (N,) int64 class index
    index: Tensor  # (N,) row numbers in the source data set, to show splits are disjoint


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # "binary" or "multiclass"
    labels: tuple[str, ...]  # label of each class index
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def _split(name: str, task: str, labels, x: np.ndarray, y: np.ndarray) -> Dataset:
    """Stratified train/validation/test split of x (N, ...) and y (N,), the same every time."""
    rows = np.arange(len(y))
    rest, test = train_test_split(
        rows, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    train, val = train_test_split(
        rest, test_size=VAL_FRACTION, stratify=y[rest], random_state=SPLIT_SEED
    )

    def take(idx: np.ndarray) -> Split:
        idx = np.sort(idx)
        return Split(
            x=torch.as_tensor(x[idx], dtype=torch.float32),
            y=torch.as_tensor(y[idx], dtype=torch.int64),
            index=torch.as_tensor(idx),
        )

    return Dataset(name, task, tuple(str(n) for n in labels), take(train), take(val), take(test))


def breast_cancer() -> Dataset:
    """569 tumours, 30 measurements each; 0 = malignant, 1 = benign."""
    raw = datasets.load_breast_cancer()
    return _split("breast_cancer", "binary", raw.target_names, raw.data, raw.target)


def digits_images() -> Dataset:
    """1,797 hand-written digits as 1x8x8 images of pixels 0-16."""
    raw = datasets.load_digits()
    images = raw.images[:, None, :, :]  # (N, 8, 8) -> (N, 1, 8, 8)
    return _split("digits_images", "multiclass", raw.target_names, images, raw.target)


def digits_rows() -> Dataset:
    """The same digits as sequences of 8 row-tokens of 8 pixels each, (N, 8, 8)."""
    raw = datasets.load_digits()
    return _split("digits_rows", "multiclass", raw.target_names, raw.images, raw.target)


def random_images() -> Dataset:
    """1,000 random 3x32x32 images of pixels 0-255 with random labels (seed 0): CIFAR-10's
    shape without its download, for the compute-heavy benchmark model. Nothing can be learnt
    from it; a model trained on it is as good as random weights (accuracy about 0.1)."""
    rng = np.random.default_rng(SPLIT_SEED)
    images = rng.integers(0, 256, size=(1000, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, size=1000)
    return _split("random_images", "multiclass", range(10), images, labels)
