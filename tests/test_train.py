"""The one training loop: what it logs, how it steps, and that a seed repeats a run."""

import nbformat
import pytest
import torch
import torch.nn.functional as F
from nbclient import NotebookClient

from homl16.train import adamw_one_cycle, steps_per_epoch, train


def regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]])


def run(seed=1, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    X, y = regression()
    optimizer, scheduler = adamw_one_cycle(model, 0.1, len(X), 10, 5, weight_decay=0.0)
    history = train(model, lambda idx: F.mse_loss(model(X[idx]), y[idx]), len(X), optimizer, epochs=5,
                    batch_size=10, scheduler=scheduler, seed=seed, **kwargs)
    return model, history


def test_history_has_per_epoch_means_and_per_step_values():
    _, history = run()
    assert history["epoch"] == [1, 2, 3, 4, 5] and len(history["seconds"]) == 5
    assert len(history["step_loss"]) == 5 * steps_per_epoch(40, 10)
    assert history["loss"][0] == pytest.approx(sum(history["step_loss"][:4]) / 4)
    assert history["loss"][-1] < history["loss"][0] / 2  # it learns


def test_a_seed_repeats_a_run_and_another_seed_changes_the_batches():
    assert run(1)[1]["step_loss"] == run(1)[1]["step_loss"] != run(2)[1]["step_loss"]


def test_named_losses_are_logged_and_only_loss_is_minimised():
    model = torch.nn.Linear(3, 1)
    X, y = regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def losses(idx):
        error = F.mse_loss(model(X[idx]), y[idx])
        return {"loss": error, "size": model.weight.norm()}  # logged, never minimised

    history = train(model, losses, len(X), optimizer, steps=7, batch_size=8)
    assert len(history["step_size"]) == 7 and "epoch" not in history
    assert history["step_loss"][-1] < history["step_loss"][0]


def test_after_step_clip_grad_and_evaluate_are_called_in_order():
    calls = []
    _, history = run(after_step=calls.append, clip_grad=0.01,
                     evaluate=lambda: {"valid_score": len(calls)})
    assert calls == list(range(1, 21))
    assert history["valid_score"] == [4, 8, 12, 16, 20]  # after each epoch's last step


def test_drop_last_skips_the_short_batch():
    model = torch.nn.Linear(3, 1)
    X, y = regression()
    sizes = []

    def loss(idx):
        sizes.append(len(idx))
        return F.mse_loss(model(X[idx]), y[idx])

    train(model, loss, 38, torch.optim.SGD(model.parameters(), lr=0.01), epochs=2, batch_size=10,
          drop_last=True)
    assert sizes == [10] * 6


def test_a_bad_loss_function_gets_a_clear_error():
    model = torch.nn.Linear(3, 1)
    with pytest.raises(TypeError, match="'loss' entry"):
        train(model, lambda idx: {"mse": torch.tensor(1.0)}, 4, torch.optim.SGD(model.parameters(), lr=0.1),
              steps=1, batch_size=2)


def test_the_notebook_progress_bar_is_saved_in_its_final_state():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from homl16.progress import progress_bar\n"
        "with progress_bar(total=50, desc='demo', unit='step') as bar:\n"
        "    for _ in range(50):\n"
        "        bar.update()")])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert len(outputs) == 1 and "application/vnd.jupyter.widget-view+json" not in outputs[0].get("data", {})
    text = outputs[0]["data"]["text/plain"]
    assert text.startswith("demo: 100%") and "50/50" in text


def test_the_seed_offset_shifts_set_seed_and_the_batch_order(monkeypatch):
    from homl16.runtime import set_seed

    seed_2 = run(2)[1]["step_loss"]
    monkeypatch.setenv("HOML16_SEED_OFFSET", "1")
    assert set_seed(42) == 43
    assert run(1)[1]["step_loss"] == seed_2  # seed 1 + offset 1 is seed 2
    monkeypatch.setenv("HOML16_SEED_OFFSET", "-1")
    with pytest.raises(ValueError, match="non-negative integer"):
        set_seed(42)
