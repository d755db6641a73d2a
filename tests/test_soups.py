import pytest
import torch
from torch import nn

from homl16.soups import ensemble_probabilities, fine_tune, greedy_soup, soup_of, uniform_soup, with_head
from homl16.train import accuracy, predict
from homl16.vit import ViT


def small_encoder():
    torch.manual_seed(0)
    return ViT(img_size=8, patch_size=4, in_channels=1, num_classes=0, embed_dim=16, depth=1, num_heads=2,
               ff_dim=32, dropout=0.0)


def net(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model[1].num_batches_tracked.fill_(seed + 1)  # an integer buffer
    return model.eval()


def test_a_soup_of_identical_models_is_the_model():
    model, X = net(0), torch.randn(5, 4)
    soup = soup_of([model, net(0), net(0)])
    torch.testing.assert_close(soup(X), model(X))


def test_a_soup_of_two_is_their_mean_and_takes_integer_buffers_from_the_first():
    a, b = net(0).state_dict(), net(1).state_dict()
    soup = uniform_soup([a, b])
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(soup[key], (a[key] + b[key]) / 2)
    assert soup["1.num_batches_tracked"].item() == 1 and soup["1.num_batches_tracked"].dtype == torch.long


def test_uniform_soup_rejects_other_architectures():
    with pytest.raises(ValueError, match="at least one"):
        uniform_soup([])
    with pytest.raises(ValueError, match="other keys"):
        uniform_soup([net(0).state_dict(), nn.Linear(4, 3).state_dict()])
    wider = nn.Sequential(nn.Linear(4, 9), nn.BatchNorm1d(9), nn.Linear(9, 3)).state_dict()
    with pytest.raises(ValueError, match="shape"):
        uniform_soup([net(0).state_dict(), wider])


def test_the_greedy_soup_is_never_worse_on_validation_than_its_best_ingredient():
    torch.manual_seed(0)
    X, y = torch.randn(60, 4), torch.randint(0, 3, (60,))
    models = [net(seed) for seed in range(4)]
    soup, kept, score = greedy_soup(models, X, y, device="cpu")
    singles = [accuracy(predict(m, X, device="cpu"), y) for m in models]
    assert kept[0] == max(range(4), key=lambda i: singles[i])
    assert score >= max(singles)
    assert score == accuracy(predict(soup, X, device="cpu"), y)
    with pytest.raises(ValueError, match="one length"):
        greedy_soup(models, X, y[:3])


def test_the_ensemble_averages_the_softmax_outputs():
    models, X = [net(0), net(1)], torch.randn(5, 4)
    expected = (models[0](X).softmax(-1) + models[1](X).softmax(-1)) / 2
    torch.testing.assert_close(ensemble_probabilities(models, X, device="cpu"), expected)
    with pytest.raises(ValueError, match="at least one"):
        ensemble_probabilities([], X)


def test_fine_tuned_copies_share_the_start_and_leave_it_unchanged():
    start = with_head(small_encoder(), 3)
    assert (start.head.weight == 0).all() and start.num_classes == 3
    before = {k: v.clone() for k, v in start.state_dict().items()}
    X, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 3
    model, history = fine_tune(start, (X, y), lr=1e-2, epochs=2, seed=1, device="cpu")
    again, _ = fine_tune(start, (X, y), lr=1e-2, epochs=2, seed=1, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())
    assert len(history["train_loss"]) == 2 and model(X).shape == (32, 3)
    torch.testing.assert_close(model.state_dict(), again.state_dict())  # a seed repeats a run
    with pytest.raises(ValueError, match="positive"):
        with_head(small_encoder(), 0)
