"""Varied captions of shapes scenes, like noisy web alt-text ("a photo of a red circle left of a square").

Used by the models trained on image-caption pairs (CLIP, DALL·E, BLIP-2).
"""

from homl16.checks import check_probability
from homl16.data.shapes import relation

# Alt-text on the web often reads "a photo of ..."; the synthetic captions get a few such wrappers too.
CAPTION_TEMPLATES = ("{}", "{}", "a photo of {}", "This is a photo of {}.", "a picture of {}",
                     "an image of {}")


def object_phrase(obj, rng, keep=(0.5, 0.25), generic=0.1):
    """'a small red circle', with the size and the colour kept with probabilities ``keep``;
    when the colour is kept, the shape is called just "shape" with probability ``generic``.

    The colour is named least often on purpose: it is the easiest cue, and if every caption
    named it, it alone would tell most pairs of a batch apart, leaving shapes little to learn from.
    """
    if len(keep) != 2:
        raise ValueError(f"keep must be a pair (p_size, p_colour), got {keep!r}")
    for name, p in (("keep[0]", keep[0]), ("keep[1]", keep[1]), ("generic", generic)):
        check_probability(name, p)
    words = [w for w, p in zip((obj.size, obj.colour), keep) if rng.random() < p]
    noun = "shape" if obj.colour in words and rng.random() < generic else obj.shape
    return " ".join(["a", *words, noun])


def describe(objects, rng, keep=(0.5, 0.25), templates=CAPTION_TEMPLATES):
    """A varied caption of a scene's objects (1 or 2), like noisy web alt-text:
    'a photo of a red circle left of a large square'. Drawn from ``rng`` (a numpy Generator)."""
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"describe takes scenes of 1 or 2 objects, got {len(objects)}")
    text = object_phrase(objects[0], rng, keep)
    if len(objects) == 2:
        text += f" {relation(*objects)} {object_phrase(objects[1], rng, keep)}"
    return templates[rng.integers(len(templates))].format(text)


def caption_order(objects):
    """The objects in the order a canonical caption names them: one object as it is; of two, first
    the one on the left (when they differ most horizontally) or on top (when they differ most
    vertically), so that the relation is always "left of" or "above"."""
    if len(objects) != 2:
        return sorted(objects, key=lambda o: o.center[0])
    first, second = objects
    return [second, first] if relation(first, second) in ("right of", "below") else [first, second]


