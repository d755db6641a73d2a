"""Oxford-IIIT Pet (37 breeds) from the hub, or an offline stand-in with the same schema."""

from homl16.data.shapes import shapes_dataset
from homl16.pretrained import load_hub_dataset

PETS_ID = "timm/oxford-iiit-pet"


def shapes_pets_stand_in(train_size=2000, test_size=400, image_size=32):
    """Offline stand-in: one large shape per image, labelled by shape; {"image", "label"} train/test."""
    from datasets import DatasetDict

    def split(size, name):
        scenes = shapes_dataset(size, seed=0, split=name, image_size=image_size, max_objects=1,
                                sizes=("large",))
        return scenes.select_columns(["image", "label"])

    return DatasetDict(train=split(train_size, "train"), test=split(test_size, "test"))


def load_pets():
    """DatasetDict(train, test) of {"image": PIL, "label": ClassLabel}: the real pets when the
    hub is reachable, else ``shapes_pets_stand_in()`` (and a printed line says so)."""
    return load_hub_dataset(PETS_ID, fallback=shapes_pets_stand_in)
