"""Between arrays, PIL images, `datasets.Dataset`s and tensors."""

import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from homl16.runtime import cache_dir, write_once


def to_pil_rgb(image):
    """Any image (PIL in any mode, or an (H, W) / (H, W, 3|4) array) -> PIL RGB.

    PIL images are turned upright by their EXIF orientation and transparent ones are laid on
    white; grey levels are repeated, an array's alpha is dropped, 16-bit, float and bool images
    are rescaled to 8 bits.
    """
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)  # camera photos are often stored sideways
        if image.mode.startswith("I") or image.mode == "F":
            image = np.asarray(image)
        elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            white = Image.new("RGBA", image.size, "white")
            return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        else:
            return image.convert("RGB")
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise TypeError(f"image must be a PIL image or a numeric array, got {type(image).__name__} "
                        f"of dtype {image.dtype}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        high = 65535 if image.max() > 255 else 255
        image = np.clip(image.astype(np.float64) / high * 255, 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"cannot read an image of shape {image.shape}")
    return Image.fromarray(image[:, :, :3])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def load_image(path):
    """Open an image file completely (so a truncated file fails here, not later) -> PIL RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_pil_rgb(image)
    except (OSError, SyntaxError) as error:  # PIL reports broken files as either
        raise ValueError(f"cannot read image {path}: {error}") from error


def image_files(folder):
    """The image files under ``folder`` (recursively, sorted by path); clear errors for a missing
    folder or one without any image file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_images(paths):
    """Open every file of ``paths`` -> (PIL RGB images, their paths, skipped: [(path, reason)]).

    Unreadable or truncated files are skipped and listed, not fatal."""
    images, readable, skipped = [], [], []
    for path in paths:
        try:
            images.append(load_image(path))
            readable.append(path)
        except ValueError as error:
            skipped.append((path, str(error.__cause__ or error)))
    return images, readable, skipped


def load_image_folder(folder):
    """Every readable image under ``folder`` (recursively, sorted) -> (paths, PIL RGB images).

    Unreadable or truncated files are skipped with a warning naming them.
    """
    import warnings

    images, paths, skipped = read_images(image_files(folder))
    for path, reason in skipped:
        warnings.warn(f"skipped: cannot read image {path}: {reason}", stacklevel=2)
    if not images:
        raise ValueError(f"no readable images in {folder}")
    return paths, images


def image_to_tensor(image):
    """A PIL image or (H, W[, C]) uint8 array -> float tensor (C, H, W) in [0, 1] (RGB, C = 3)."""
    array = np.asarray(to_pil_rgb(image))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def image_dataset(images, labels, label_names, **columns):
    """A `datasets.Dataset` with the book's schema: image (PIL RGB), label (ClassLabel), plus ``columns``."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    if len(images) == 0:
        raise ValueError("cannot make a dataset from no images")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    for name, values in columns.items():
        if len(values) != len(images):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(images)} images")
    data = {"image": [to_pil_rgb(image) for image in images], "label": [int(y) for y in labels]}
    data.update(columns)
    features = Dataset.from_dict({k: v[:1] for k, v in columns.items()}).features if columns else {}
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(label_names)),
                         **features})
    return Dataset.from_dict(data, features=features)


def to_tensors(dataset, mode="RGB", image_column="image", label_column="label"):
    """Dataset of same-size images -> (X float (N, C, H, W) in [0, 1], y long (N,)).

    mode "RGB" gives C = 3, mode "L" (grey) gives C = 1.
    """
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset has no column {missing}; its columns are {dataset.column_names}")
    arrays = [np.asarray(image.convert(mode)) for image in dataset[image_column]]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)[:3]}...; resize them first")
    X = torch.from_numpy(np.stack(arrays)).float() / 255
    X = X.unsqueeze(1) if mode == "L" else X.permute(0, 3, 1, 2)
    return X.contiguous(), torch.tensor(dataset[label_column], dtype=torch.long)


DATA_PACKAGE = Path(__file__).resolve().parent  # homl16/data: the generators a build may call


def dataset_key(build, options):
    """The cache key of ``build()`` with ``options``: a CRC-32 of the options and of the source of every
    module that can change the result, the one that defines ``build`` and those of ``homl16.data``
    (a build in food.py draws its scenes with shapes.py)."""
    files = [Path(build.__code__.co_filename).resolve(), *sorted(DATA_PACKAGE.glob("*.py"))]
    sources = b"".join(path.read_bytes() for path in dict.fromkeys(files))
    return zlib.crc32(sources + repr(sorted(options.items())).encode())


def cached_dataset(name, build, **options):
    """``build()`` once, then reload it from the homl16 cache (``datasets`` save/load_from_disk).

    The cache entry is keyed by ``name``, the ``options`` that change the result (seed,
    sizes, ...) and the source of the module that defines ``build`` and of the ``homl16.data``
    modules (``dataset_key``), so editing a generator never serves a stale dataset.
    """
    from datasets import disable_progress_bars, enable_progress_bars, load_from_disk

    if not name or not isinstance(name, str) or "/" in name:
        raise ValueError(f"name must be a plain name like 'shapes', got {name!r}")
    if not callable(build) or not hasattr(build, "__code__"):
        raise TypeError(f"build must be a Python function that returns a Dataset, got {type(build).__name__}")
    path = cache_dir() / "datasets" / f"{name}-{dataset_key(build, options):08x}"
    if path.exists():
        return load_from_disk(str(path))
    dataset = build()

    def save(tmp):
        disable_progress_bars()
        try:
            dataset.save_to_disk(str(tmp))
        finally:
            enable_progress_bars()

    return load_from_disk(str(write_once(path, save)))
