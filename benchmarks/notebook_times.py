"""Execute notebooks headless, one at a time, and measure each one's wall time and peak memory.

    python benchmarks/notebook_times.py                  # every notebook, outputs discarded
    python benchmarks/notebook_times.py 03 07 --inplace  # some notebooks, outputs stored (as committed)
    python benchmarks/notebook_times.py --jobs 3         # three at a time (a GPU machine with many cores)

Prints a Markdown table (notebook, seconds, peak RSS of the kernel in MiB) and writes it to
benchmarks/notebook_times.md. Run it on a quiet machine: two notebooks at once slow each other down,
so ``--jobs`` above 1 is for machines with cores to spare, and its times are not one-at-a-time times.
"""

import argparse
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# Runs in a fresh process so that its RUSAGE_CHILDREN covers one notebook's kernel only.
# nbclient alone (no nbconvert) so that the script also runs where only the kernel stack is installed.
MEASURE = """
import resource, sys, time
import nbformat
from nbclient import NotebookClient
path, inplace = sys.argv[1], sys.argv[2] == "1"
notebook = nbformat.read(path, as_version=4)
start = time.perf_counter()
try:
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": "."}}).execute()
    ok = True
except Exception as error:
    print(str(error)[-3000:], file=sys.stderr)
    ok = False
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if inplace and ok:
    nbformat.write(notebook, path)
print(int(not ok), round(seconds, 1), peak_kib, flush=True)
"""


def execute(path, inplace):
    """(seconds, peak MiB, ok) of one headless execution of the notebook at ``path``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", MEASURE, path.name, "1" if inplace else "0"],
                            cwd=path.parent, env=env, capture_output=True, text=True)
    if result.returncode or not result.stdout.strip():
        print(result.stderr[-3000:], file=sys.stderr)
        return float("nan"), float("nan"), False
    code, seconds, peak_kib = result.stdout.split()
    if code != "0":
        print(result.stderr[-3000:], file=sys.stderr)
    return float(seconds), int(peak_kib) / 1024, code == "0"


def device_name():
    import torch

    return f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"


def select(prefixes):
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if prefixes:  # in the order given (with --jobs, give the longest first)
        paths = [p for prefix in prefixes for p in paths if p.name.startswith(prefix)]
    if not paths:
        raise SystemExit(f"no notebook in {NOTEBOOKS} starts with {prefixes}")
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="notebook name prefixes, e.g. 03 07 (default: all)")
    parser.add_argument("--inplace", action="store_true", help="store the executed notebooks' outputs")
    parser.add_argument("--table", type=Path, help="where to write the table (default: "
                        "benchmarks/notebook_times.md, when every notebook runs)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1)")
    args = parser.parse_args()
    at_once = "one notebook at a time" if args.jobs == 1 else f"{args.jobs} notebooks at a time"
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}), "
             f"{device_name()}, {at_once}.", "",
             "| notebook | seconds | peak RSS (MiB) |", "|---|---:|---:|"]

    def run(path):
        seconds, peak_mib, ok = execute(path, args.inplace)
        row = f"| {path.name} | {seconds:.0f} | {peak_mib:.0f} |" + ("" if ok else " FAILED")
        print(row, flush=True)  # as each one ends
        return row, seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, select(args.prefixes)))  # rows in the order given
    lines += [row for row, _ in results]
    lines.append(f"| total | {sum(seconds for _, seconds in results):.0f} | |")
    if args.jobs > 1:
        lines.append(f"| wall time, {args.jobs} at a time | {time.perf_counter() - start:.0f} | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.table or not args.prefixes:
        (args.table or ROOT / "benchmarks" / "notebook_times.md").write_text(table)


if __name__ == "__main__":
    main()
