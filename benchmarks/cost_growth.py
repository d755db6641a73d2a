"""How the forward time of one ViT, PVT and Swin block grows per doubling of the image side.

    python benchmarks/cost_growth.py            # prints a Markdown table and writes benchmarks/cost_growth.md
    python benchmarks/cost_growth.py --profile  # also where a Swin block's time goes at each side

The settings are the Swin notebook's (64 wide, 2 heads, 7x7 windows, R = 8, patches of 4, sides 56 -> 448);
each time is the median of interleaved rounds (``homl16.cost.measure_cost_growth``), and the whole sweep runs
``SWEEPS`` times to show how much the growth factors move from one sweep to the next. Theory: 16x per
doubling for global attention's scores, 4x for windows'.
"""

import platform
import statistics
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

from homl16.cost import BLOCK_NAMES, growth_per_doubling, make_block, measure_cost_growth

SIDES = [56, 112, 224, 448]
REPEATS = 9
SWEEPS = 3
THEORY = {"global": 16, "sra": 16, "window": 4}


def profile_window_block(side, repeats=5):
    """{operator: share of a shifted Swin block's forward time} at one image side (CPU profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    block, call = make_block("window")
    grid = (side // 4, side // 4)
    x = torch.randn(1, grid[0] * grid[1], 64)
    with torch.no_grad():
        call(block, x, grid)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                call(block, x, grid)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    return {e.key: e.self_cpu_time_total / total for e in events}, total / repeats / 1e6


def main():
    growths = defaultdict(list)
    last_rows = None
    for _ in range(SWEEPS):
        rows = measure_cost_growth(SIDES, repeats=REPEATS)
        for kind in BLOCK_NAMES:
            growths[kind].append(growth_per_doubling(rows, kind))
        last_rows = rows
    sides = " / ".join(map(str, SIDES))
    lines = [f"Forward of one block, batch 1, median of {REPEATS} interleaved rounds per size, "
             f"{SWEEPS} sweeps, on cpu ({platform.machine()}, {torch.get_num_threads()} threads), "
             f"{date.today()}.", "",
             f"| block | ms at {sides} px (last sweep) | growth 224 -> 448 per sweep "
             "| median | theory (scores) |",
             "|---|---:|---:|---:|---:|"]
    for kind, name in BLOCK_NAMES.items():
        times = " / ".join(f"{row['seconds'] * 1e3:.2f}" for row in last_rows if row["kind"] == kind)
        lines.append(f"| {name} | {times} | {', '.join(f'{g:.1f}x' for g in growths[kind])} | "
                     f"{statistics.median(growths[kind]):.1f}x | {THEORY[kind]}x |")
    if "--profile" in sys.argv:
        lines += ["", "Swin block (shifted windows): share of the forward time per operator (top 8)", ""]
        for side in SIDES[-2:]:
            shares, seconds = profile_window_block(side)
            top = sorted(shares.items(), key=lambda item: -item[1])[:8]
            shares_text = ", ".join(f"{name} {share:.0%}" for name, share in top)
            lines.append(f"- {side} px ({seconds * 1e3:.1f} ms): {shares_text}")
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "cost_growth.md").write_text(text)


if __name__ == "__main__":
    main()
