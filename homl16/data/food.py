"""Food-101 (101 dishes) from the hub, or an offline stand-in with the same schema."""

from homl16.data.convert import cached_dataset, image_dataset
from homl16.data.shapes import ShapesWorld
from homl16.pretrained import load_hub_dataset

FOOD101_ID = "ethz/food101"


def shapes_food_stand_in(train_size=2000, test_size=400, image_size=32):
    """Offline stand-in with many fine-grained classes, like Food-101's dishes: one large shape per image,
    labelled by its colour and shape ("red circle": 6 colours x 4 shapes = 24 classes); train/test."""
    from datasets import DatasetDict

    world = ShapesWorld(image_size=image_size, min_objects=1, max_objects=1, sizes=("large",))
    names = [f"{colour} {shape}" for colour in world.colours for shape in world.shapes]

    def split(size, name):
        def build():
            scenes = world.scenes(size, seed=0, split=name)
            labels = [names.index(f"{s.objects[0].colour} {s.objects[0].shape}") for s in scenes]
            return image_dataset([s.image for s in scenes], labels, names)

        return cached_dataset("shapes-food", build, size=size, split=name, image_size=image_size)

    return DatasetDict(train=split(train_size, "train"), test=split(test_size, "test"))


def load_food101():
    """DatasetDict of {"image": PIL, "label": ClassLabel}: the real Food-101 (train, validation) when the
    hub is reachable, else ``shapes_food_stand_in()`` (train, test), and a printed line says so."""
    return load_hub_dataset(FOOD101_ID, fallback=shapes_food_stand_in)
