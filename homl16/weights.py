"""One way to copy weights between the course's modules and transformers' (both directions, shape-checked).

A conversion lists (course tensor, transformers tensor) pairs once, and ``copy_weights`` copies them either
way. A fused projection on one side and separate ones on the other (a ``qkv`` Linear vs ``query``, ``key``,
``value``) is one pair whose transformers side is a list: it is joined (concatenated on dim 0) into the
course's tensor, or split back into the list.
"""

import torch


def linear_pairs(ours, theirs):
    """The (weight, bias) pairs of two ``nn.Linear`` (or ``nn.LayerNorm``, conv) modules of one shape.
    Either side may be a list of modules that are joined along the output dimension."""
    def tensors(module, name):
        if isinstance(module, (list, tuple)):
            return [getattr(m, name) for m in module]
        return getattr(module, name)

    first = ours[0] if isinstance(ours, (list, tuple)) else ours
    names = ["weight"] if first.bias is None else ["weight", "bias"]
    return [(tensors(ours, n), tensors(theirs, n)) for n in names]


def module_pairs(ours, theirs):
    """Pairs of every parameter and buffer of two modules with the same structure, in registration order."""
    a = list(ours.state_dict().values())
    b = list(theirs.state_dict().values())
    if len(a) != len(b):
        raise ValueError(f"the modules hold {len(a)} vs {len(b)} tensors: not the same structure")
    return list(zip(a, b))


def _joined(tensor):
    return torch.cat(list(tensor)) if isinstance(tensor, (list, tuple)) else tensor


def check_pairs(pairs, model_name="model"):
    """Raise a ValueError naming the first pair whose shapes differ (lists are compared joined)."""
    for i, (ours, theirs) in enumerate(pairs):
        ours_shape, theirs_shape = _joined(ours).shape, _joined(theirs).shape
        if ours_shape != theirs_shape:
            raise ValueError(f"pair {i}: {tuple(ours_shape)} in the course's {model_name} vs "
                             f"{tuple(theirs_shape)} in transformers': the sizes differ")


@torch.no_grad()
def copy_weights(pairs, to="course", model_name="model"):
    """Copy each (course tensor, transformers tensor) pair towards ``to`` ("course" or "transformers").

    Shapes are checked for every pair before anything is copied, so a mismatch leaves both sides as
    they were. A list on either side is joined when read and split (by its members' sizes) when written.
    """
    if to not in ("course", "transformers"):
        raise ValueError(f"to must be 'course' or 'transformers', got {to!r}")
    pairs = list(pairs)
    check_pairs(pairs, model_name)
    for ours, theirs in pairs:
        source, target = (theirs, ours) if to == "course" else (ours, theirs)
        value = _joined(source)
        if isinstance(target, (list, tuple)):
            for part, chunk in zip(target, value.split([t.shape[0] for t in target])):
                part.copy_(chunk)
        else:
            target.copy_(value)
