"""Input checks that turn shape mistakes into clear ``ValueError``s (and wrong types into ``TypeError``s)."""

import numbers

import torch


def check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_rank(name, x, rank, layout):
    """Raise unless ``x`` is a non-empty tensor with ``rank`` dimensions laid out as ``layout``."""
    check_tensor(name, x)
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")


def check_images(name, x, channels, height=None, width=None):
    """Raise unless ``x`` is an image batch (B, channels, height, width)."""
    check_rank(name, x, 4, "(batch, channels, height, width)")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if height is not None and tuple(x.shape[2:]) != (height, width):
        raise ValueError(f"{name} must be {height}x{width} images, got {x.shape[2]}x{x.shape[3]}")


def check_grid_tokens(name, x, grid_size):
    """Raise unless ``x`` is (batch, H * W tokens, dim) for ``grid_size`` = (H, W)."""
    check_rank(name, x, 3, "(batch, tokens, embed_dim)")
    height, width = grid_size
    if x.shape[1] != height * width:
        raise ValueError(f"{name} has {x.shape[1]} tokens but grid_size {tuple(grid_size)} "
                         f"holds {height * width}")


def check_divisible(name, size, divisor, divisor_name):
    check_positive(divisor_name, divisor, integer=True)
    if size % divisor != 0:
        raise ValueError(f"{name}={size} must be divisible by {divisor_name}={divisor}")


def check_positive(name, value, integer=False):
    """Raise unless ``value`` is a number > 0 (an int when ``integer``): sizes, epochs, temperatures."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def check_probability(name, p):
    """Raise unless ``p`` is a number in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a probability (a number), got {type(p).__name__}")
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def check_interval(name, interval, high=None):
    """Raise unless ``interval`` is a pair (low, high) with 0 < low <= high (<= ``high`` if given)."""
    bound = "" if high is None else f" <= {high}"
    try:
        low, up = interval
        valid = 0 < low <= up and (high is None or up <= high)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{name} must be a pair (low, high) with 0 < low <= high{bound}, got {interval!r}")


def check_strings(name, values):
    """A non-empty list of strings from ``values``; a single str is refused (it is not a list of texts)."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings, not a single string: wrap it as [{values!r}]")
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty")
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must hold strings, got {type(bad[0]).__name__} {bad[0]!r}")
    return values


def check_ids(name, ids, vocab_size):
    """Raise unless ``ids`` is an integer tensor with every value in [0, vocab_size)."""
    check_tensor(name, ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{name} must be in [0, {vocab_size}), got values in [{ids.min()}, {ids.max()}]")
