"""Linear probes: how much a frozen encoder's features say about the labels.

The self-supervised notebooks (DINO's k-NN aside) compare encoders with the same probe: mean-pooled
patch tokens of the frozen encoder, then a logistic regression fitted on the training features.
"""

import torch

from homl16.checks import check_positive, check_rank
from homl16.runtime import get_device


@torch.no_grad()
def pooled_features(vit, X, batch_size=500, device=None):
    """The mean of the final patch tokens (class token left out) of a course ``ViT`` for every image.

    X (N, C, H, W) -> (N, D), on the CPU. Mean pooling serves encoders that never train a class token
    (MAE's, I-JEPA's), so every encoder is probed the same way.
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    check_positive("batch_size", batch_size, integer=True)
    device = device or get_device()
    vit.eval().to(device)
    return torch.cat([vit.forward_features(X[i:i + batch_size].to(device))[:, 1:].mean(1).cpu()
                      for i in range(0, len(X), batch_size)])


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, C=1.0):
    """Fit a logistic regression on standardised train features (N, D) and labels (N,); return its
    test accuracy. ``C`` is the inverse L2 strength (sklearn's)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for name, features, labels in (("train", train_features, train_labels),
                                   ("test", test_features, test_labels)):
        check_rank(f"{name}_features", features, 2, "(images, dims)")
        if len(features) != len(labels):
            raise ValueError(f"{name}_features has {len(features)} rows but {len(labels)} labels")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train and test features differ in size: {train_features.shape[1]} vs "
                         f"{test_features.shape[1]}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    probe.fit(train_features.numpy(), train_labels.numpy())
    return float(probe.score(test_features.numpy(), test_labels.numpy()))


def probe_accuracy(vit, X_train, y_train, X_test, y_test, device=None):
    """``linear_probe_accuracy`` of ``vit``'s ``pooled_features``: the one number the notebook compares."""
    return linear_probe_accuracy(pooled_features(vit, X_train, device=device), y_train,
                                 pooled_features(vit, X_test, device=device), y_test)
