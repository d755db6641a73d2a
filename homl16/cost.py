"""How the cost of attention grows with the image: score counts and measured block times.

Three kinds of attention over an H x W grid of N = H * W patch tokens:

- ``"global"`` (ViT): every token attends to every token, N² scores;
- ``"sra"`` (PVT's spatial-reduction attention): keys and values come from the grid shrunk by
  ``sr_ratio`` R on each side, N * (H / R) * (W / R) = N² / R² scores: still quadratic;
- ``"window"`` (Swin): every token attends to the w² tokens of its window, N * w² scores: linear.

Doubling the image side multiplies N by 4, so the scores by 16 (global, SRA) or by 4 (windows).
``measure_cost_growth`` times real blocks (``homl16.transformer.EncoderBlock``,
``homl16.pvt.PVTBlock``, ``homl16.swin.SwinBlock``) to check it; the benchmarks reuse it.
"""

import math
import statistics
import time

import torch

from homl16.checks import check_positive

KINDS = ("global", "sra", "window")
BLOCK_NAMES = {"global": "ViT block (global)", "sra": "PVT block (SRA)", "window": "Swin block (windows)"}


def grid_shape(grid):
    """An int side or an (H, W) pair -> (H, W), checked positive."""
    try:
        H, W = (grid, grid) if isinstance(grid, int) else tuple(grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be an int side or an (H, W) pair, got {grid!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"grid sides must be positive, got {(H, W)}")
    return H, W


def attention_scores(kind, grid, window_size=7, sr_ratio=8):
    """Number of query-key scores one attention head computes for one image on a ``grid`` of tokens.

    kind: "global", "sra" or "window"; grid: side or (H, W). E.g. a 28 x 28 grid:
    global 784² = 614,656; window (7 x 7) 784 x 49 = 38,416.
    """
    H, W = grid_shape(grid)
    check_positive("window_size", window_size, integer=True)
    check_positive("sr_ratio", sr_ratio, integer=True)
    N = H * W
    if kind == "global":
        return N * N
    if kind == "sra":
        return N * math.ceil(H / sr_ratio) * math.ceil(W / sr_ratio)
    if kind == "window":
        if H % window_size or W % window_size:
            raise ValueError(f"grid {(H, W)} must be divisible by window_size={window_size}")
        return N * window_size ** 2
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def make_block(kind, embed_dim=64, num_heads=2, window_size=7, sr_ratio=8, mlp_ratio=4):
    """A randomly initialised block of each kind, in eval mode, and how to call it:
    -> (block, call) with call(block, x, grid_size) running its forward on x (B, H * W, D)."""
    ff_dim = embed_dim * mlp_ratio
    if kind == "global":
        from homl16.transformer import EncoderBlock

        return EncoderBlock(embed_dim, num_heads, ff_dim).eval(), lambda block, x, grid: block(x)
    if kind == "sra":
        from homl16.pvt import PVTBlock  # lazily: PVT is a sibling topic

        return PVTBlock(embed_dim, num_heads, ff_dim, sr_ratio).eval(), lambda block, x, grid: block(x, grid)
    if kind == "window":
        from homl16.swin import SwinBlock

        block = SwinBlock(embed_dim, num_heads, window_size, shift_size=window_size // 2, mlp_ratio=mlp_ratio)
        return block.eval(), lambda block, x, grid: block(x, grid)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@torch.no_grad()
def time_block(block, x, *args, repeats=3, warmup=1, call=None):
    """Median wall time in seconds of ``block(x, *args)`` (or ``call(block, x, *args)``) over
    ``repeats`` runs after ``warmup`` untimed ones, without gradients."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    call = call or (lambda block, x, *args: block(x, *args))
    for _ in range(warmup):
        call(block, x, *args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(block, x, *args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_cost_growth(image_sides, patch_size=4, kinds=KINDS, embed_dim=64, num_heads=2, window_size=7,
                        sr_ratio=8, batch_size=1, repeats=5, max_seconds=None, seed=0):
    """Time one block of each kind on images of each side (forward pass, batch of ``batch_size``).

    The timings are interleaved: after one untimed warm-up round, each of ``repeats`` rounds times
    every (kind, side) once, so a burst of load on a shared machine slows all sizes of a round alike
    instead of one size of one kind. -> list of dict rows {kind, image_side, grid, tokens, scores,
    seconds, all_seconds}: seconds is the median over the rounds, scores per head and image.
    A kind stops growing once its warm-up run at one side takes more than ``max_seconds``.
    """
    check_positive("patch_size", patch_size, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    check_positive("repeats", repeats, integer=True)
    image_sides = list(image_sides)
    if not image_sides:
        raise ValueError("image_sides is empty")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"kind must be one of {KINDS}, got {unknown}")
    bad = [side for side in image_sides if side % patch_size]
    if bad:
        raise ValueError(f"image sides {bad} must be divisible by patch_size={patch_size}")
    runs = []  # (row, block, call, x), timed round after round
    for kind in kinds:
        torch.manual_seed(seed)
        block, call = make_block(kind, embed_dim, num_heads, window_size, sr_ratio)
        for side in image_sides:
            grid = (side // patch_size, side // patch_size)
            x = torch.randn(batch_size, grid[0] * grid[1], embed_dim)
            row = {"kind": kind, "image_side": side, "grid": grid, "tokens": grid[0] * grid[1],
                   "scores": attention_scores(kind, grid, window_size, sr_ratio), "all_seconds": []}
            runs.append((row, block, call, x))
            warmup_seconds = time_block(block, x, grid, repeats=1, warmup=0, call=call)  # the warm-up round
            if max_seconds is not None and warmup_seconds > max_seconds:
                break
    for _ in range(repeats):
        for row, block, call, x in runs:
            row["all_seconds"].append(time_block(block, x, row["grid"], repeats=1, warmup=0, call=call))
    rows = [row for row, *_ in runs]
    for row in rows:
        row["seconds"] = statistics.median(row["all_seconds"])
    return rows


def growth_per_doubling(rows, kind, key="seconds", last=True):
    """Factor by which ``key`` grows when the image side doubles, for one kind of ``rows``
    (as returned by ``measure_cost_growth``, sides doubling): the last doubling's factor (the
    largest images, where attention dominates), or with ``last=False`` the geometric mean over all."""
    rows = sorted((row for row in rows if row["kind"] == kind), key=lambda row: row["image_side"])
    values = [row[key] for row in rows]
    if len(values) < 2:
        raise ValueError(f"need at least two sizes of {kind!r} to measure a growth, got {len(values)}")
    if any(b["image_side"] != 2 * a["image_side"] for a, b in zip(rows, rows[1:])):
        raise ValueError(f"the image sides must double, got {[row['image_side'] for row in rows]}")
    ratios = [b / a for a, b in zip(values, values[1:])]
    return ratios[-1] if last else math.prod(ratios) ** (1 / len(ratios))


@torch.no_grad()
def window_block_parts(image_sides, patch_size=4, embed_dim=64, num_heads=2, window_size=7, repeats=5,
                       seed=0):
    """Where a shifted Swin block's forward time goes: the median seconds of each of its parts on
    images of each side, timed in interleaved rounds like ``measure_cost_growth``.

    -> {image_side: {part: seconds}} with the parts "layer norms" (both), "roll + windows" (the two
    cyclic shifts, window partition and reverse: pure memory moves), "window attention" (projections,
    bias + mask, scaled dot-product attention) and "MLP". Their sum is close to the block's time.
    """
    from homl16.swin import cyclic_shift, window_partition, window_reverse

    check_positive("repeats", repeats, integer=True)
    torch.manual_seed(seed)
    block, _ = make_block("window", embed_dim, num_heads, window_size)
    w, s = window_size, block.shift_size
    runs = []  # (side, part, function of no argument)
    for side in image_sides:
        H = W = side // patch_size
        x = torch.randn(1, H * W, embed_dim)
        grid = x.view(1, H, W, embed_dim)
        windows = window_partition(cyclic_shift(grid, s), w).view(-1, w * w, embed_dim)
        mask = block.shift_mask((H, W), x.device, x.dtype)

        def moves(grid=grid, H=H, W=W):
            windows = window_partition(cyclic_shift(grid, s), w)
            return cyclic_shift(window_reverse(windows, (H, W)), s, reverse=True)

        runs += [(side, "layer norms", lambda x=x: (block.norm1(x), block.norm2(x))),
                 (side, "roll + windows", moves),
                 (side, "window attention", lambda windows=windows, mask=mask: block.attn(windows, mask)),
                 (side, "MLP", lambda x=x: block.mlp(x))]
    times = {}
    for round_ in range(repeats + 1):  # round 0 warms up
        for side, part, run in runs:
            start = time.perf_counter()
            run()
            if round_:
                times.setdefault(side, {}).setdefault(part, []).append(time.perf_counter() - start)
    return {side: {part: statistics.median(t) for part, t in parts.items()} for side, parts in times.items()}


@torch.no_grad()
def time_side_by_side(calls, repeats=5, warmup=1):
    """Time several no-argument callables against each other: {name: best wall time in seconds}.

    ``calls``: {name: callable}. After ``warmup`` untimed rounds, each of ``repeats`` rounds runs every
    callable once, so a burst of load on a shared machine slows a round of all of them alike; the
    best of the rounds is the least disturbed run of each.
    """
    if not calls:
        raise ValueError("calls is empty: nothing to time")
    check_positive("repeats", repeats, integer=True)
    times = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: min(seconds) for name, seconds in times.items()}
