"""The shapes world: deterministic scenes of coloured shapes with captions, boxes, masks and videos.

Every scene comes with everything later notebooks need: a caption (CLIP, BLIP-2,
Flamingo, DALL-E), boxes with class ids (DETR), per-pixel class and instance masks
(PVT, Swin), and short videos with a narration (VideoBERT). Nothing is random
unless drawn from the ``numpy.random.Generator`` that is passed in, so a seed
gives the same data on every machine.
"""

from dataclasses import dataclass, field

import numpy as np

from homl16.data.convert import cached_dataset

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
}
SIZES = {"small": (0.10, 0.13), "large": (0.17, 0.22)}  # radius range, as a share of the image size
ACTIONS = ("moves left", "moves right", "moves up", "moves down", "grows", "shrinks")
SPLITS = ("train", "valid", "test")
BACKGROUND = 245


def split_rng(seed, split):
    """A generator for one split of a seed, so train/valid/test never share scenes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([seed, SPLITS.index(split)])


def shape_mask(shape, center, radius, image_size):
    """Boolean (image_size, image_size) mask of one shape centred at (x, y) with the given radius."""
    ys, xs = np.mgrid[0:image_size, 0:image_size]
    dx, dy = xs - center[0], ys - center[1]
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = 0.85 * radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # apex up, base at 0.8 radius below the centre
        return (dy >= -radius) & (dy <= 0.8 * radius) & (np.abs(dx) <= (dy + radius) * 0.58)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@dataclass
class ShapeObject:
    """One shape in a scene; ``box`` is (x0, y0, x1, y1) in pixels, inclusive of its pixels."""

    shape: str
    colour: str
    size: str
    center: tuple
    radius: float
    box: tuple = ()

    @property
    def phrase(self):
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass
class Scene:
    """image (H, W, 3) uint8; mask (H, W) shape class (0 = background, i + 1 = SHAPES[i]);
    instances (H, W) object index (0 = background, j + 1 = objects[j])."""

    image: np.ndarray
    objects: list
    mask: np.ndarray
    instances: np.ndarray
    caption: str = ""
    boxes: list = field(default_factory=list)
    labels: list = field(default_factory=list)


def relation(a, b):
    """How object a stands relative to object b, along the axis where they differ most."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def caption_for(objects):
    """'a small red circle' / 'a small red circle left of a large blue square' /
    'from left to right: a ..., a ... and a ...'."""
    if not objects:
        raise ValueError("caption_for needs at least one object")
    if len(objects) == 1:
        return objects[0].phrase
    if len(objects) == 2:
        return f"{objects[0].phrase} {relation(*objects)} {objects[1].phrase}"
    ordered = sorted(objects, key=lambda o: o.center[0])
    phrases = [o.phrase for o in ordered]
    return "from left to right: " + ", ".join(phrases[:-1]) + " and " + phrases[-1]


class ShapesWorld:
    """A generator of shapes-world scenes and videos.

    Parameters: ``image_size`` (pixels, at least 16), ``min_objects``/``max_objects`` per
    scene, the vocabulary (``shapes``, ``colours``, ``sizes``), and ``combinations``: the
    (colour, shape) pairs allowed (default all), e.g. to hold some out for zero-shot tests.
    """

    def __init__(self, image_size=64, min_objects=1, max_objects=3, shapes=SHAPES,
                 colours=tuple(COLOURS), sizes=tuple(SIZES), combinations=None):
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if not 1 <= min_objects <= max_objects <= 4:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 4, got {min_objects}, {max_objects}")
        for name, values, known in (("shapes", shapes, SHAPES), ("colours", colours, COLOURS),
                                    ("sizes", sizes, SIZES)):
            unknown = [v for v in values if v not in known]
            if not values or unknown:
                raise ValueError(f"{name} must be a non-empty subset of {tuple(known)}, got {values!r}")
        self.image_size = image_size
        self.min_objects, self.max_objects = min_objects, max_objects
        self.shapes, self.colours, self.sizes = tuple(shapes), tuple(colours), tuple(sizes)
        all_pairs = [(c, s) for c in self.colours for s in self.shapes]
        self.combinations = all_pairs if combinations is None else [tuple(p) for p in combinations]
        bad = [p for p in self.combinations if p not in all_pairs]
        if not self.combinations or bad:
            raise ValueError(f"combinations must be (colour, shape) pairs of the vocabulary, "
                             f"got {bad or 'none'}")

    def random_object(self, rng, placed):
        """Draw a shape that does not touch the already ``placed`` ones (None if it failed)."""
        colour, shape = self.combinations[rng.integers(len(self.combinations))]
        size = self.sizes[rng.integers(len(self.sizes))]
        low, high = SIZES[size]
        radius = rng.uniform(low, high) * self.image_size
        for _ in range(50):
            center = tuple(rng.uniform(radius + 1, self.image_size - radius - 2, size=2))
            if all(np.hypot(center[0] - o.center[0], center[1] - o.center[1]) > radius + o.radius + 2
                   for o in placed):
                return ShapeObject(shape, colour, size, center, radius)
        return None

    def render(self, objects):
        """Rasterise objects into a Scene, computing the boxes from the pixels actually drawn."""
        n = self.image_size
        image = np.full((n, n, 3), BACKGROUND, dtype=np.uint8)
        mask = np.zeros((n, n), dtype=np.int64)
        instances = np.zeros((n, n), dtype=np.int64)
        for j, obj in enumerate(objects):
            pixels = shape_mask(obj.shape, obj.center, obj.radius, n)
            image[pixels] = COLOURS[obj.colour]
            mask[pixels] = SHAPES.index(obj.shape) + 1
            instances[pixels] = j + 1
        for j, obj in enumerate(objects):
            ys, xs = np.nonzero(instances == j + 1)
            obj.box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        return Scene(image, objects, mask, instances, caption_for(objects),
                     boxes=[list(o.box) for o in objects],
                     labels=[SHAPES.index(o.shape) for o in objects])

    def scene(self, rng):
        """One random Scene drawn from ``rng`` (a numpy Generator)."""
        count = rng.integers(self.min_objects, self.max_objects + 1)
        while True:
            objects = []
            for _ in range(count):
                obj = self.random_object(rng, objects)
                if obj is None:
                    break
                objects.append(obj)
            if len(objects) == count:
                return self.render(objects)

    def scenes(self, num_scenes, seed=0, split="train"):
        """A list of ``num_scenes`` Scenes, the same for the same (seed, split)."""
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be at least 1, got {num_scenes}")
        rng = split_rng(seed, split)
        return [self.scene(rng) for _ in range(num_scenes)]

    def video(self, rng, num_frames=8):
        """A short clip: the first object performs an action, the others stay still.

        Returns a dict: frames (T, H, W, 3) uint8, narration ("the red circle moves left"),
        action (one of ACTIONS), colour and shape of the actor, and one Scene per frame.
        """
        if num_frames < 2:
            raise ValueError(f"num_frames must be at least 2, got {num_frames}")
        action = ACTIONS[rng.integers(len(ACTIONS))]
        while True:
            scene = self.scene(rng)
            actor, others = scene.objects[0], scene.objects[1:]
            path = self.action_path(actor, action, num_frames)
            if path is not None and all(
                    np.hypot(c[0] - o.center[0], c[1] - o.center[1]) > r + o.radius + 2
                    for c, r in path for o in others):
                break
        frames = []
        for center, radius in path:
            moved = ShapeObject(actor.shape, actor.colour, actor.size, center, radius)
            frames.append(self.render([moved, *others]))
        return {"frames": np.stack([f.image for f in frames]), "scenes": frames,
                "narration": f"the {actor.colour} {actor.shape} {action}", "action": action,
                "colour": actor.colour, "shape": actor.shape}

    def action_path(self, actor, action, num_frames):
        """[(center, radius)] per frame for ``action``, or None if it would leave the image."""
        n = self.image_size
        t = np.linspace(0, 1, num_frames)
        x, y, r = actor.center[0], actor.center[1], actor.radius
        if action in ("grows", "shrinks"):
            small, large = SIZES["small"][0] * n, SIZES["large"][1] * n
            radii = small + (large - small) * (t if action == "grows" else 1 - t)
            if not (large + 1 <= x <= n - large - 2 and large + 1 <= y <= n - large - 2):
                return None
            return [((x, y), rad) for rad in radii]
        distance = 0.35 * n
        dx, dy = {"moves left": (-1, 0), "moves right": (1, 0),
                  "moves up": (0, -1), "moves down": (0, 1)}[action]
        centers = [(x + dx * distance * s, y + dy * distance * s) for s in t]
        if not all(r + 1 <= cx <= n - r - 2 and r + 1 <= cy <= n - r - 2 for cx, cy in centers):
            return None
        return [(c, r) for c in centers]


def shapes_dataset(num_scenes, seed=0, split="train", **world_options):
    """Scenes as a `datasets.Dataset` with columns:

    image (PIL RGB), label (ClassLabel SHAPES: the shape of the first object named in
    the caption), caption (str), boxes ([[x0, y0, x1, y1], ...] pixels), box_labels (shape
    ids), mask (PIL "L", pixel = shape id + 1, 0 = background). ``world_options`` go to
    ``ShapesWorld`` (image_size, min_objects, max_objects, ...). Cached on disk.
    """
    world = ShapesWorld(**world_options)

    def build():
        from PIL import Image

        from homl16.data.convert import image_dataset

        scenes = world.scenes(num_scenes, seed, split)
        first = [s.objects[0] if len(s.objects) < 3 else min(s.objects, key=lambda o: o.center[0])
                 for s in scenes]
        return image_dataset(
            [s.image for s in scenes], [SHAPES.index(o.shape) for o in first], SHAPES,
            caption=[s.caption for s in scenes], boxes=[s.boxes for s in scenes],
            box_labels=[s.labels for s in scenes],
            mask=[Image.fromarray(s.mask.astype(np.uint8)) for s in scenes])

    return cached_dataset("shapes", build, num_scenes=num_scenes, seed=seed, split=split, **world_options)


def shapes_video_dataset(num_videos, seed=0, split="train", num_frames=8, **world_options):
    """Videos as a `datasets.Dataset`: frames (list of PIL RGB), narration (str),
    label (ClassLabel ACTIONS), colour, shape (str). Cached on disk."""
    if num_videos < 1:
        raise ValueError(f"num_videos must be at least 1, got {num_videos}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, got {num_frames}")
    world = ShapesWorld(**world_options)

    def build():
        from datasets import ClassLabel, Dataset, Features, Sequence, Value
        from datasets import Image as ImageFeature
        from PIL import Image

        rng = split_rng(seed, split)
        videos = [world.video(rng, num_frames) for _ in range(num_videos)]
        features = Features({"frames": Sequence(ImageFeature()), "narration": Value("string"),
                             "label": ClassLabel(names=list(ACTIONS)),
                             "colour": Value("string"), "shape": Value("string")})
        return Dataset.from_dict({
            "frames": [[Image.fromarray(f) for f in v["frames"]] for v in videos],
            "narration": [v["narration"] for v in videos],
            "label": [ACTIONS.index(v["action"]) for v in videos],
            "colour": [v["colour"] for v in videos], "shape": [v["shape"] for v in videos],
        }, features=features)

    return cached_dataset("shapes_video", build, num_videos=num_videos, seed=seed, split=split,
                          num_frames=num_frames, **world_options)
