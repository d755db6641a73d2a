"""Offline data sources with the book's schema: {"image": PIL RGB, "label": int, ...} rows."""

from homl16.data.convert import (
    cached_dataset,
    image_dataset,
    image_files,
    image_to_tensor,
    load_image,
    load_image_folder,
    read_images,
    to_pil_rgb,
    to_tensors,
)
from homl16.data.digits import load_digits, load_mnist, mnist_tensors
from homl16.data.food import load_food101, shapes_food_stand_in
from homl16.data.pets import load_pets, shapes_pets_stand_in
from homl16.data.photos import PHOTO_NAMES, load_photo, photos_dataset
from homl16.data.shapes import ACTIONS, COLOURS, SHAPES, ShapesWorld, shapes_dataset, shapes_video_dataset

__all__ = ["ACTIONS", "COLOURS", "PHOTO_NAMES", "SHAPES", "ShapesWorld", "cached_dataset", "image_dataset",
           "image_files", "image_to_tensor", "load_digits", "load_food101", "load_image",
           "load_image_folder", "load_mnist", "load_pets", "load_photo", "mnist_tensors", "photos_dataset",
           "read_images", "shapes_dataset", "shapes_food_stand_in", "shapes_pets_stand_in",
           "shapes_video_dataset", "to_pil_rgb", "to_tensors"]
