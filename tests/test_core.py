import matplotlib
import matplotlib.pyplot
import numpy as np
import pytest
import torch
from torch import nn

import homl16
from homl16.augment import random_shift
from homl16.cnn import SmallCNN
from homl16.plot import draw_boxes, overlay_attention, plot_history, show_images, show_mask
from homl16.train import accuracy, evaluate, fit

matplotlib.use("Agg")


def toy_problem(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return X, (X[:, 0] + X[:, 1] > 0).long()


def train_toy(seed):
    homl16.set_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    history = fit(model, toy_problem(), epochs=5, optimizer=optimizer, valid_data=toy_problem(seed=1),
                  batch_size=32, device="cpu", seed=seed)
    return model, history


def test_fit_learns_and_records_history():
    model, history = train_toy(0)
    assert history["epoch"] == [1, 2, 3, 4, 5]
    assert set(history) == {"epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                            "seconds"}
    assert history["valid_accuracy"][-1] > 0.9
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert evaluate(model, *toy_problem(seed=2), device="cpu")["accuracy"] > 0.9


def test_training_is_deterministic_for_a_seed():
    (_, a), (_, b), (_, c) = train_toy(1), train_toy(1), train_toy(2)
    assert a["train_loss"] == b["train_loss"] and a["valid_accuracy"] == b["valid_accuracy"]
    assert a["train_loss"] != c["train_loss"]


def test_fit_rejects_bad_input():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, toy_problem(), epochs=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="non-empty"):
        fit(model, (torch.zeros(0, 2), torch.zeros(0)), 1, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="non-empty"):
        fit(model, (torch.zeros(3, 2), torch.zeros(2)), 1, torch.optim.SGD(model.parameters(), lr=0.1))


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_random_shift_moves_each_image_by_whole_pixels_within_range():
    X = torch.zeros(64, 1, 9, 9)
    X[:, :, 4, 4] = 1  # a dot in the centre
    shifted = random_shift(X, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == X.shape and torch.equal(shifted.sum((1, 2, 3)), torch.ones(64))
    position = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = position // 9, position % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # offsets differ per image


def test_seed_and_device():
    homl16.set_seed(3)
    a = torch.rand(3), np.random.rand()
    homl16.set_seed(3)
    assert torch.equal(a[0], torch.rand(3)) and a[1] == np.random.rand()
    assert homl16.get_device() in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match="seed"):
        homl16.set_seed(-1)


def test_report_prints_one_line_per_result(capsys):
    homl16.report({"vit_test_accuracy": 0.96912345, "epochs": 40, "model": "vit",
                   "share": torch.tensor(0.756), "mean": np.float64(0.12345)})
    assert capsys.readouterr().out.splitlines() == [
        "vit_test_accuracy: 0.9691", "epochs: 40", "model: vit", "share: 0.756", "mean: 0.1235"]
    with pytest.raises(ValueError, match="identifiers"):
        homl16.report({"test accuracy": 1.0})
    with pytest.raises(ValueError, match="NaN"):
        homl16.report({"loss": float("nan")})
    with pytest.raises(ValueError, match="non-empty"):
        homl16.report({})


def test_show_source_displays_the_code_that_runs(capsys):
    homl16.show_source(SmallCNN)
    assert "class SmallCNN(nn.Module):" in capsys.readouterr().out
    with pytest.raises(TypeError, match="functions or classes"):
        homl16.show_source(3)
    with pytest.raises(ValueError):
        homl16.show_source()


def test_small_cnn_shapes_and_checks():
    assert SmallCNN(1, 10)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="1 channels"):
        SmallCNN(1, 10)(torch.randn(2, 3, 28, 28))


def new_axes():
    return matplotlib.pyplot.figure().add_subplot()


def test_plots_draw_what_they_are_given():
    images = [torch.rand(1, 8, 8), np.zeros((8, 8, 3)), torch.rand(3, 8, 8)]
    fig = show_images(images, titles=["a", "b", "c"], ncols=2)
    assert len([ax for ax in fig.axes if ax.images]) == 3 and fig.axes[2].get_title() == "c"
    ax = draw_boxes(np.zeros((20, 20, 3)), [[1, 2, 10, 12]], labels=["circle"], ax=new_axes())
    assert len(ax.patches) == 1 and ax.texts[0].get_text() == "circle"
    ax = overlay_attention(np.zeros((16, 16)), torch.rand(4, 4), ax=new_axes())
    assert [im.get_array().shape for im in ax.images] == [(16, 16), (4, 4)]
    assert show_mask(np.eye(4, dtype=int), ax=new_axes()).images
    fig = plot_history({"epoch": [1, 2], "train_loss": [2, 1], "valid_loss": [2, 1.5],
                        "train_accuracy": [0.5, 0.7], "valid_accuracy": [0.4, 0.6]}, labels=["vit"])
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match="titles"):
        show_images([np.zeros((2, 2))], titles=["a", "b"])
    with pytest.raises(ValueError, match="attention"):
        overlay_attention(np.zeros((4, 4)), torch.rand(2, 2, 2))


def test_write_once_keeps_the_first_copy_and_leaves_no_temporary_folder(tmp_path):
    from homl16.runtime import write_once

    def write(text):
        def to(tmp):
            tmp.mkdir()
            (tmp / "file.txt").write_text(text)
        return to

    target = tmp_path / "entry"
    assert write_once(target, write("first")) == target
    write_once(target, write("second"))  # already there: not rebuilt
    assert (target / "file.txt").read_text() == "first"
    # another process finished first: its copy stays, ours is cleaned up
    racing = tmp_path / "racing"

    def slow_write(tmp):
        write("winner")(racing)
        write("loser")(tmp)

    write_once(racing, slow_write)
    assert (racing / "file.txt").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "racing"]


def test_write_once_also_writes_a_single_file_whole(tmp_path):
    from homl16.runtime import write_once

    target = tmp_path / "features.pt"
    write_once(target, lambda tmp: torch.save(torch.arange(3), tmp))
    write_once(target, lambda tmp: torch.save(torch.arange(5), tmp))  # already there: not rewritten
    assert torch.load(target, weights_only=True).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["features.pt"]
