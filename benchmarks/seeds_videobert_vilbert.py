"""Seed-to-seed spread of the VideoBERT and ViLBERT notebooks' reported figures.

    python benchmarks/seeds_videobert_vilbert.py               # notebooks 08 and 09, seeds 0 1 42
    python benchmarks/seeds_videobert_vilbert.py 08 --seeds 0 1 2 3

Executes each notebook headless once per seed, with every training seed of the notebook (the
``42`` of ``setup_notebook(seed=42)``, ``set_seed(42)``, ``manual_seed(42)`` and ``seed=42``)
replaced; the data, the visual words and the test sets keep their own seeds, so the spread is
that of training alone. Reads the ``homl16.report`` lines of each run and writes a table (each
figure per seed, mean, min-max) to benchmarks/seeds_videobert_vilbert.md. Runs outside the test
suite: about a minute per notebook and seed on 2 CPU cores.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TRAINING_SEED = re.compile(r"(setup_notebook\(seed=|set_seed\(|manual_seed\(|\bseed=)42\b")
EXECUTE = """
import sys
import nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(notebook, timeout=1200, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[2]}})
client.execute()
nbformat.write(notebook, sys.argv[1])
"""


def with_seed(notebook, seed):
    """A copy of the notebook whose training seeds are ``seed``."""
    notebook = nbformat.from_dict(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.source = TRAINING_SEED.sub(rf"\g<1>{seed}", cell.source)
    return notebook


def reported(notebook):
    """{name: value} from the output of the notebook's ``homl16.report`` cell."""
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "homl16.report(" in c.source)
    text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    return {name: float(value) for name, value in re.findall(r"^(\w+): (\S+)$", text, re.MULTILINE)}


def run(path, seed):
    """The reported figures of one execution of the notebook at ``path`` with ``seed``."""
    notebook = with_seed(nbformat.read(path, as_version=4), seed)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        nbformat.write(notebook, copy)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        result = subprocess.run([sys.executable, "-c", EXECUTE, str(copy), str(path.parent)], cwd=path.parent,
                                env=env, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{path.name} with seed {seed} failed:\n{result.stderr[-3000:]}")
        return reported(nbformat.read(copy, as_version=4))


def table(name, seeds, runs):
    header = " | ".join(f"seed {s}" for s in seeds)
    lines = [f"### {name}", "", f"| figure | {header} | mean | min-max |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for key in runs[0]:
        values = [r[key] for r in runs]
        cells = " | ".join(f"{v:.3g}" for v in values)
        mean = sum(values) / len(values)
        lines.append(f"| {key} | {cells} | {mean:.3g} | {min(values):.3g}-{max(values):.3g} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", default=["08", "09"],
                        help="notebook prefixes (default: 08 09)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 42])
    args = parser.parse_args()
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}) "
             f"with `python benchmarks/seeds_videobert_vilbert.py {' '.join(args.prefixes)} --seeds "
             f"{' '.join(map(str, args.seeds))}`: training seeds only (data and test sets fixed).", ""]
    for prefix in args.prefixes:
        path = next(NOTEBOOKS.glob(f"{prefix}*.ipynb"))
        runs = []
        for seed in args.seeds:
            runs.append(run(path, seed))
            print(path.name, seed, runs[-1], flush=True)
        lines += table(path.name, args.seeds, runs)
    text = "\n".join(lines)
    print(text)
    (ROOT / "benchmarks" / "seeds_videobert_vilbert.md").write_text(text)


if __name__ == "__main__":
    main()
