"""benchmarks/seeds.py reads the figures that ``homl16.report`` printed in a stored notebook."""

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("seeds", ROOT / "benchmarks" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)


def test_reported_figures_are_read_from_the_report_cells_only():
    cell = nbformat.v4.new_code_cell("homl16.report({...})")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text="accuracy: 0.9312\nlabel: cat\nsteps: 120\nratio: 1.5e-05\n")]
    other = nbformat.v4.new_code_cell("print('loss: 3.0')")
    other.outputs = [nbformat.v4.new_output("stream", name="stdout", text="loss: 3.0\n")]
    notebook = nbformat.v4.new_notebook(cells=[other, cell])
    assert seeds.reported(notebook) == {"accuracy": 0.9312, "steps": 120.0, "ratio": 1.5e-05}


def test_every_committed_notebook_reports_numbers_the_script_can_read():
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        assert seeds.reported(nbformat.read(path, as_version=4)), f"{path.name} reports no figure"
