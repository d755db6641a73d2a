import numpy as np
import pytest

from homl16.data.shapes import (
    ACTIONS,
    COLOURS,
    SHAPES,
    ShapesWorld,
    relation,
    shape_mask,
    shapes_dataset,
    split_rng,
)


def test_scenes_are_deterministic_for_a_seed_and_differ_between_seeds_and_splits():
    world = ShapesWorld(image_size=48)
    a, b = world.scenes(5, seed=3), world.scenes(5, seed=3)
    assert all(np.array_equal(x.image, y.image) and x.caption == y.caption for x, y in zip(a, b))
    other_seed, other_split = world.scenes(5, seed=4), world.scenes(5, seed=3, split="test")
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, other_seed))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, other_split))


def test_boxes_masks_and_colours_agree_with_the_pixels():
    world = ShapesWorld(image_size=64, min_objects=1, max_objects=4)
    for scene in world.scenes(40, seed=1):
        assert set(np.unique(scene.instances)) == set(range(len(scene.objects) + 1))
        for j, obj in enumerate(scene.objects):
            pixels = scene.instances == j + 1
            ys, xs = np.nonzero(pixels)
            assert scene.boxes[j] == [xs.min(), ys.min(), xs.max(), ys.max()]
            assert (scene.image[pixels] == COLOURS[obj.colour]).all()
            assert (scene.mask[pixels] == SHAPES.index(obj.shape) + 1).all()
            assert scene.labels[j] == SHAPES.index(obj.shape)
        assert (scene.image[scene.instances == 0] == 245).all()


def test_captions_name_every_object_and_the_true_relation():
    world = ShapesWorld(image_size=64, min_objects=1, max_objects=3)
    for scene in world.scenes(60, seed=2):
        for obj in scene.objects:
            assert f"{obj.size} {obj.colour} {obj.shape}" in scene.caption
        if len(scene.objects) == 2:
            a, b = scene.objects
            ca = np.argwhere(scene.instances == 1).mean(0)[::-1]  # (x, y) centroid
            cb = np.argwhere(scene.instances == 2).mean(0)[::-1]
            dx, dy = cb - ca
            expected = ("left of" if dx > 0 else "right of") if abs(dx) >= abs(dy) else (
                "above" if dy > 0 else "below")
            assert relation(a, b) == expected and f" {expected} " in scene.caption
        if len(scene.objects) == 3:
            order = [scene.caption.index(f"{o.size} {o.colour} {o.shape}") for o in scene.objects]
            lefts = [o.center[0] for o in scene.objects]
            assert np.argsort(order).tolist() == np.argsort(lefts).tolist()


def test_large_shapes_are_larger_than_small_ones():
    scenes = ShapesWorld(image_size=64, max_objects=1).scenes(80, seed=0)
    areas = {"small": [], "large": []}
    for s in scenes:
        areas[s.objects[0].size].append((s.instances == 1).sum())
    assert max(areas["small"]) < min(areas["large"])


def test_held_out_combinations_never_appear():
    world = ShapesWorld(combinations=[("red", "circle"), ("blue", "square")], max_objects=3)
    pairs = {(o.colour, o.shape) for s in world.scenes(30) for o in s.objects}
    assert pairs == {("red", "circle"), ("blue", "square")}


def test_videos_do_what_their_narration_says():
    world = ShapesWorld(image_size=64, max_objects=2)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        video = world.video(rng, num_frames=6)
        seen.add(video["action"])
        assert video["frames"].shape == (6, 64, 64, 3)
        assert video["narration"] == f"the {video['colour']} {video['shape']} {video['action']}"
        first, last = video["scenes"][0], video["scenes"][-1]
        (x0, y0), (x1, y1) = [np.argwhere(s.instances == 1).mean(0)[::-1] for s in (first, last)]
        area0, area1 = (first.instances == 1).sum(), (last.instances == 1).sum()
        change = {"moves left": x0 - x1, "moves right": x1 - x0, "moves up": y0 - y1,
                  "moves down": y1 - y0, "grows": area1 - area0, "shrinks": area0 - area1}
        assert change[video["action"]] > 5
    assert seen == set(ACTIONS)


def test_shape_masks_are_the_named_shapes():
    circle, square = shape_mask("circle", (16, 16), 8, 32), shape_mask("square", (16, 16), 8, 32)
    assert abs(circle.sum() - np.pi * 64) < 15
    assert square.sum() == 13 * 13  # integer offsets with |d| <= 6.8: -6..6
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("star", (16, 16), 8, 32)


@pytest.mark.parametrize("options, message", [
    ({"image_size": 8}, "image_size"),
    ({"min_objects": 3, "max_objects": 2}, "min_objects"),
    ({"shapes": ("circle", "star")}, "shapes"),
    ({"colours": ()}, "colours"),
    ({"combinations": [("red", "star")]}, "combinations"),
])
def test_bad_world_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        ShapesWorld(**options)


def test_bad_counts_and_splits_are_rejected():
    with pytest.raises(ValueError, match="num_scenes"):
        ShapesWorld().scenes(0)
    with pytest.raises(ValueError, match="split"):
        split_rng(0, "training")


def test_shapes_dataset_schema():
    ds = shapes_dataset(12, seed=5, image_size=32, max_objects=2)
    assert ds.column_names == ["image", "label", "caption", "boxes", "box_labels", "mask"]
    assert ds.features["label"].names == list(SHAPES)
    row = ds[0]
    assert row["image"].mode == "RGB" and row["image"].size == (32, 32)
    mask = np.asarray(row["mask"])
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= set(range(len(SHAPES) + 1))
    assert len(row["boxes"]) == len(row["box_labels"]) >= 1
    assert row["label"] == row["box_labels"][0]
    assert SHAPES[row["label"]] in row["caption"]
