"""Seed-to-seed spread of every figure a notebook reports, outside the test suite.

    python benchmarks/seeds.py 01 13 --seeds 3      # notebooks 01 and 13, offsets 0, 1, 2

Offset 0 is the committed run: its figures are read from the notebook's stored outputs. Each other offset
executes the notebook (outputs discarded) with ``HOML16_SEED_OFFSET`` set,
which shifts the seed of ``setup_notebook``/``set_seed`` (model initialisation, augmentation, sampling)
and of every ``homl16.train.train`` run (batch order); the data stay the same. The ``name: value`` lines
printed by ``homl16.report`` are collected, and a Markdown table of mean, min and max per figure is
written to benchmarks/seeds.md (rows of notebooks not re-run are kept). One notebook at a time.
"""

import argparse
import os
import re
import statistics
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "seeds.md"
LINE = re.compile(r"^([A-Za-z_]\w*): (-?\d+(?:\.\d+)?(?:e-?\d+)?)$")


def reported(notebook):
    """{name: value} of the numeric lines printed by the cells that call ``report(``."""
    values = {}
    for cell in notebook.cells:
        if cell.cell_type != "code" or "report(" not in cell.source:
            continue
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                match = LINE.match(line.strip())
                if match:
                    values[match[1]] = float(match[2])
    return values


def run(path, offset):
    notebook = nbformat.read(path, as_version=4)
    os.environ["HOML16_SEED_OFFSET"] = str(offset)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return reported(notebook)


def read_rows():
    if not TABLE.exists():
        return {}
    rows = {}
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0][:2].isdigit():
            rows[(cells[0], cells[1])] = line
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="+", help="notebook name prefixes, e.g. 01 13")
    parser.add_argument("--seeds", type=int, default=3, help="seed offsets 0 .. seeds-1 (default 3; "
                                                             "0 is read from the committed outputs)")
    args = parser.parse_args()
    rows = read_rows()
    for prefix in args.prefixes:
        for path in sorted((ROOT / "notebooks").glob(f"{prefix}*.ipynb")):
            runs = [reported(nbformat.read(path, as_version=4))]
            for offset in range(1, args.seeds):
                runs.append(run(path, offset))
                print(f"{path.stem} seed offset {offset}: {runs[-1]}", file=sys.stderr)
            for name in runs[0]:
                values = [r[name] for r in runs if name in r]
                rows[(path.stem, name)] = (f"| {path.stem} | {name} | {len(values)} "
                                           f"| {statistics.mean(values):.4g} | {min(values):.4g} "
                                           f"| {max(values):.4g} |")
    header = ["# Seed-to-seed spread of the reported figures", "",
              "`python benchmarks/seeds.py NN --seeds 3` on a 2-core CPU, offline; seed offsets 0, 1, 2 "
              "(offset 0 is the committed run, read from the stored outputs). Time figures (`*_seconds`, "
              "growth ratios) are listed for completeness only: the seed runs may share the machine with "
              "other work (those of 05, 06 and 12-17 did), so speed is measured in "
              "`benchmarks/cost_growth.md` and `benchmarks/notebook_times.md`.", "",
              "| notebook | figure | seeds | mean | min | max |", "|---|---|---|---|---|---|"]
    TABLE.write_text("\n".join(header + [rows[key] for key in sorted(rows)]) + "\n")
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
