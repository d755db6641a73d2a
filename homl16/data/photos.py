"""Real photos that ship inside scikit-image and scikit-learn, by name."""

from homl16.checks import check_strings
from homl16.data.convert import to_pil_rgb

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins",
                  "immunohistochemistry", "hubble_deep_field", "colorwheel")
SKLEARN_PHOTOS = ("china", "flower")
PHOTO_NAMES = SKIMAGE_PHOTOS + SKLEARN_PHOTOS


def load_photo(name):
    """A real photo as a PIL RGB image, e.g. load_photo("chelsea") (a cat) or load_photo("china")."""
    if name in SKIMAGE_PHOTOS:
        import skimage.data

        return to_pil_rgb(getattr(skimage.data, name)())
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return to_pil_rgb(load_sample_image(f"{name}.jpg"))
    raise ValueError(f"unknown photo {name!r}; choose one of {PHOTO_NAMES}")


def photos_dataset(names=PHOTO_NAMES):
    """A `datasets.Dataset` of {"image": PIL RGB, "name": str} for the given photo names."""
    from datasets import Dataset, Features, Image, Value

    names = check_strings("names", names)
    return Dataset.from_dict({"image": [load_photo(n) for n in names], "name": names},
                             features=Features({"image": Image(), "name": Value("string")}))
