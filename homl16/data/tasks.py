"""The shapes world as ready-made tensors for each task of the course (one adapter per task).

Every adapter returns images as float (N, 3, S, S) in [0, 1]; a model that wants another range
normalises inside its own forward.
"""

import numpy as np
import torch

from homl16.boxes import pack_targets
from homl16.data.captions import caption_order, describe
from homl16.data.shapes import ShapesWorld, caption_for


def shapes_detection_data(num_scenes, seed=0, split="train", image_size=64, min_objects=1, max_objects=3):
    """Shapes-world scenes for detection: X float (N, 3, H, W) in [0, 1] and padded targets
    (N, max_objects, 5) (label = shape id, then normalised cx, cy, w, h; see ``pack_targets``)."""
    from homl16.data.convert import to_tensors
    from homl16.data.shapes import shapes_dataset

    dataset = shapes_dataset(num_scenes, seed, split, image_size=image_size, min_objects=min_objects,
                             max_objects=max_objects)
    X, _ = to_tensors(dataset)
    return X, pack_targets(dataset["boxes"], dataset["box_labels"], image_size, max_objects)


def shapes_segmentation_data(num_scenes, seed=0, split="train", image_size=64, **world_options):
    """Shapes scenes as tensors: X float (N, 3, H, W) in [0, 1], masks long (N, H, W) with
    0 = background and shape id + 1 for each object pixel (``CLASS_NAMES``). Cached on disk."""
    from homl16.data.convert import to_tensors
    from homl16.data.shapes import shapes_dataset

    dataset = shapes_dataset(num_scenes, seed, split, image_size=image_size, **world_options)
    X, _ = to_tensors(dataset)
    masks = torch.from_numpy(np.stack([np.asarray(m) for m in dataset["mask"]])).long()
    return X, masks


def shapes_caption_data(num_scenes, seed=0, split="train", image_size=64, min_objects=1, max_objects=2):
    """Shapes scenes for captioning: (X float (N, 3, S, S) in [0, 1], canonical captions, scenes
    whose ``objects`` are in ``caption_order``, i.e. in the order the captions name them)."""
    world = ShapesWorld(image_size=image_size, min_objects=min_objects, max_objects=max_objects)
    scenes = world.scenes(num_scenes, seed, split)
    for scene in scenes:
        scene.objects = caption_order(scene.objects)
    captions = [caption_for(scene.objects) for scene in scenes]
    X = torch.from_numpy(np.stack([scene.image for scene in scenes])).permute(0, 3, 1, 2).float() / 255
    return X.contiguous(), captions, scenes


def images_to_tensor(images):
    """uint8 images (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], the course's one pixel range."""
    if len(images) == 0:
        raise ValueError("images is empty")
    images = np.stack(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be (N, H, W, 3) RGB arrays, got shape {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def shapes_clip_data(num_scenes, seed=0, split="train", min_objects=1, max_objects=2, image_size=32,
                     combinations=None, describe_seed=None):
    """Shapes-world scenes for CLIP: (images (N, 3, S, S) in [0, 1], captions, scenes).

    Captions are drawn by ``describe`` (from ``describe_seed``, default ``seed``); the scenes keep
    the objects' shapes and colours, for zero-shot labels.
    """
    world = ShapesWorld(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                        combinations=combinations)
    scenes = world.scenes(num_scenes, seed, split)
    rng = np.random.default_rng(seed if describe_seed is None else describe_seed)
    captions = [describe(scene.objects, rng) for scene in scenes]
    return images_to_tensor([scene.image for scene in scenes]), captions, scenes
