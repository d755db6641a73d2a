"""A photo search engine (exercises 13 and 14).

Exercise 13: CLIP embeds every photo of a folder once; the unit-length vectors go into a FAISS index
(exact inner product, i.e. cosine similarity), saved to disk with the list of files. A text or an image
query is embedded the same way and its nearest photos are returned.

Exercise 14: an image-to-text model (BLIP-2) captions every photo into a CSV next to the photos, which
can then be searched by keyword.

Works with any transformers ``CLIPModel`` / ``CLIPProcessor`` (the book's ``openai/clip-vit-base-patch32``
online, the course's shapes CLIP offline) and any captioner with the book's
``processor`` / ``generate`` / ``batch_decode`` interface.
"""

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from homl16.checks import check_positive
from homl16.data.convert import image_files, load_image, read_images, to_pil_rgb
from homl16.progress import progress_bar
from homl16.runtime import REPO_ROOT, get_device

INDEX_FILE, FILES_FILE, CAPTIONS_FILE = "photos.faiss", "photos.json", "captions.csv"
DUPLICATE_SUFFIX = "_copy"  # fill_photo_folder names a planted near-duplicate of x.png x_copy.jpg
CAPTION_TOKENS = 30  # the longest caption when the checkpoint sets no max_new_tokens (as the hub's BLIP-2)


def default_photo_folder():
    """``data/photos/`` in a clone of the course, else ``photos/`` in the working directory."""
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "data" / "photos"
    return Path("photos")


# ---------------------------------------------------------------- a gallery to search

def fill_photo_folder(folder, num_scenes=1000, num_duplicates=50, seed=0):
    """Fill an empty (or missing) ``folder`` with an offline gallery; a folder with anything in it is left
    as it is.

    The gallery: the real photos that ship with scikit-image and scikit-learn (as JPEG, 256 pixels on
    their long side), ``num_scenes`` shapes-world scenes (64x64 PNG, some saved in palette, grey-scale or
    RGBA mode, as real folders mix them), and for ``num_duplicates`` of the scenes a near-duplicate
    ``scene_NNNN_copy.jpg`` (resized to 56x56 and re-encoded as JPEG, like a photo sent through a
    messaging app). Returns the folder's image files.
    """
    from PIL import Image

    from homl16.data.photos import PHOTO_NAMES, load_photo
    from homl16.data.shapes import ShapesWorld

    folder = Path(folder)
    check_positive("num_scenes", num_scenes, integer=True)
    if not 0 <= num_duplicates <= num_scenes:
        raise ValueError(f"num_duplicates must be between 0 and num_scenes ({num_scenes}), "
                         f"got {num_duplicates}")
    if folder.is_dir() and any(True for _ in folder.iterdir()):
        return image_files(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTO_NAMES:
        photo = load_photo(name)
        photo.thumbnail((256, 256))
        photo.save(folder / f"photo_{name}.jpg", quality=90)
    modes = {7: "P", 11: "L", 13: "RGBA"}  # every 7th scene in palette mode, every 11th grey, every 13th RGBA
    scenes = ShapesWorld(image_size=64, min_objects=1, max_objects=2).scenes(num_scenes, seed, "test")
    for i, scene in enumerate(scenes):
        image = Image.fromarray(scene.image)
        mode = next((m for step, m in modes.items() if i % step == 0 and i > 0), "RGB")
        image.convert(mode).save(folder / f"scene_{i:04d}.png")
        if i < num_duplicates:
            copy = image.resize((56, 56), Image.BICUBIC)
            copy.save(folder / f"scene_{i:04d}{DUPLICATE_SUFFIX}.jpg", quality=80)
    return image_files(folder)


def planted_duplicates(paths):
    """(original, near-duplicate) index pairs among ``paths``, by ``fill_photo_folder``'s naming."""
    position = {Path(p).stem: i for i, p in enumerate(paths)}
    return [(position[stem[:-len(DUPLICATE_SUFFIX)]], i) for stem, i in position.items()
            if stem.endswith(DUPLICATE_SUFFIX) and stem[:-len(DUPLICATE_SUFFIX)] in position]


# ---------------------------------------------------------------- embeddings

@torch.no_grad()
def embed_images(model, processor, images, device=None):
    """Unit-length CLIP embeddings of a list of images (PIL in any mode, or arrays): float32 (N, D)."""
    if len(images) == 0:
        raise ValueError("embed_images needs at least one image")
    device = device or get_device()
    inputs = processor(images=[to_pil_rgb(image) for image in images], return_tensors="pt")
    model = model.to(device).eval()
    features = model.get_image_features(pixel_values=inputs["pixel_values"].to(device)).pooler_output
    return F.normalize(features.float(), dim=-1).cpu().numpy()


@torch.no_grad()
def embed_texts(model, processor, texts, device=None):
    """Unit-length CLIP embeddings of a list of strings: float32 (N, D)."""
    if isinstance(texts, str) or len(texts) == 0 or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"texts must be a non-empty list of non-empty strings, got {texts!r}")
    device = device or get_device()
    inputs = processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    features = model.to(device).eval().get_text_features(**inputs).pooler_output
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def embed_query(model, processor, query, device=None):
    """A query -> its unit-length embedding (1, D): a string is embedded as text; an image (PIL, array)
    or the path of an image file, as an image."""
    if isinstance(query, str) and not Path(query).is_file():
        return embed_texts(model, processor, [query], device)
    if isinstance(query, (str, Path)):
        query = load_image(query)
    return embed_images(model, processor, [query], device)


# ---------------------------------------------------------------- the index

@dataclass
class PhotoIndex:
    """A searchable folder: ``files`` (paths relative to ``folder``), their unit-length CLIP embeddings
    ``vectors`` (N, D) float32 in a FAISS ``index`` (row i is files[i]), and the files that could not be
    read, ``skipped``: [(file, reason)]."""
    folder: Path
    files: list
    vectors: np.ndarray
    index: object
    skipped: list

    def path(self, i):
        return self.folder / self.files[i]


def exact_inner_product_index(vectors):
    """A FAISS ``IndexFlatIP`` (exact search; inner product = cosine similarity of unit vectors)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def photo_batches(folder, batch_size, desc):
    """Read the images under ``folder`` batch by batch, with a progress bar: yields (PIL RGB images, their
    files relative to ``folder``, the batch's unreadable files [(file, reason)])."""
    check_positive("batch_size", batch_size, integer=True)
    folder = Path(folder)
    paths = image_files(folder)
    for start in progress_bar(range(0, len(paths), batch_size), desc=desc, unit="batch"):
        images, readable, unreadable = read_images(paths[start:start + batch_size])
        yield (images, [str(p.relative_to(folder)) for p in readable],
               [(str(p.relative_to(folder)), reason) for p, reason in unreadable])


def build_photo_index(folder, model, processor, batch_size=64, device=None):
    """Embed every readable image under ``folder`` (in batches, so a large folder never sits in memory)
    -> ``PhotoIndex``. Unreadable files are skipped and listed in ``.skipped``."""
    files, vectors, skipped = [], [], []
    for images, batch_files, unreadable in photo_batches(folder, batch_size, "embedding photos"):
        skipped += unreadable
        if images:
            vectors.append(embed_images(model, processor, images, device))
            files += batch_files
    if not files:
        raise ValueError(f"none of the {len(skipped)} image files in {folder} could be read")
    vectors = np.concatenate(vectors)
    return PhotoIndex(Path(folder), files, vectors, exact_inner_product_index(vectors), skipped)


def save_photo_index(photo_index, directory=None):
    """Save the FAISS index and the list of files (default: into the photo folder) -> the directory."""
    import faiss

    directory = Path(directory or photo_index.folder)
    directory.mkdir(parents=True, exist_ok=True)
    faiss.write_index(photo_index.index, str(directory / INDEX_FILE))
    # the folder relative to the index, so that a folder moved with its index still loads
    listing = {"folder": os.path.relpath(photo_index.folder, directory), "files": photo_index.files,
               "skipped": photo_index.skipped}
    (directory / FILES_FILE).write_text(json.dumps(listing, indent=1))
    return directory


def load_photo_index(directory):
    """The ``PhotoIndex`` saved by ``save_photo_index`` in ``directory``."""
    import faiss

    directory = Path(directory)
    if not (directory / INDEX_FILE).is_file() or not (directory / FILES_FILE).is_file():
        raise ValueError(f"no saved photo index in {directory} (expected {INDEX_FILE} and {FILES_FILE})")
    index = faiss.read_index(str(directory / INDEX_FILE))
    listing = json.loads((directory / FILES_FILE).read_text())
    if index.ntotal != len(listing["files"]):
        raise ValueError(f"{directory}: the index holds {index.ntotal} vectors "
                         f"for {len(listing['files'])} files")
    vectors = index.reconstruct_n(0, index.ntotal)
    return PhotoIndex(Path(os.path.normpath(directory / listing["folder"])), listing["files"], vectors, index,
                      [tuple(s) for s in listing["skipped"]])


def faiss_search(index, queries, k):
    """The ``k`` most similar rows for each query (Q, D): (scores (Q, k), row ids (Q, k)), best first."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def numpy_search(vectors, queries, k):
    """The same search in plain NumPy: every similarity, then the ``k`` largest (ties: lower row first)."""
    similarities = np.asarray(queries, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T  # (Q, N)
    ids = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, ids, axis=1), ids


def search_photos(photo_index, model, processor, query, k=5, device=None):
    """The ``k`` photos most similar to ``query`` (a text, an image or an image file): [(path, score)]."""
    check_positive("k", k, integer=True)
    scores, ids = faiss_search(photo_index.index, embed_query(model, processor, query, device),
                               min(k, len(photo_index.files)))
    return [(photo_index.path(i), float(s)) for s, i in zip(scores[0], ids[0])]


def duplicate_recall_at_1(photo_index, pairs):
    """Share of planted (original, duplicate) pairs where querying with the original's embedding gives
    the duplicate as the best match other than the original itself."""
    if not pairs:
        raise ValueError("no (original, duplicate) pairs to measure")
    originals = np.array([i for i, _ in pairs])
    _, ids = faiss_search(photo_index.index, photo_index.vectors[originals], 2)
    best_other = np.where(ids[:, 0] == originals, ids[:, 1], ids[:, 0])
    return float((best_other == np.array([j for _, j in pairs])).mean())


def show_results(results, query, ncols=5, size=1.5):
    """A figure of search results [(path, score)], titled with the query."""
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no results to show")
    rows = -(-len(results) // ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(size * ncols, size * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, score) in zip(axes.flat, results):
        ax.imshow(load_image(path))
        ax.set_title(f"{Path(path).name[:18]}\n{score:.3f}", fontsize=7)
    label = query if isinstance(query, str) else "an image"
    fig.suptitle(f"query: {label}", fontsize=9)
    fig.tight_layout()
    return fig


def search_box(photo_index, model, processor, k=10, example="a red circle", device=None):
    """An ipywidgets search box: type a text query (or the path of an image file) and press Enter to see
    the ``k`` best photos. Without a widget frontend it shows the results for ``example``."""
    import ipywidgets as widgets
    from IPython.display import Image, display

    from homl16.widgets import WithStaticFallback, figure_png

    text = widgets.Text(value=example, description="search", continuous_update=False,
                        layout=widgets.Layout(width="60%"))
    output = widgets.Output()

    def show(query):
        output.clear_output(wait=True)
        with output:
            if not query.strip():
                print("type a description, or the path of an image file")
                return
            results = search_photos(photo_index, model, processor, query, k, device)
            display(Image(figure_png(show_results(results, query))))

    text.observe(lambda change: show(change["new"]), names="value")
    show(example)
    static = show_results(search_photos(photo_index, model, processor, example, k, device), example)
    return WithStaticFallback(widgets.VBox([text, output]), static)


# ---------------------------------------------------------------- captions (exercise 14)

@torch.no_grad()
def caption_images(model, processor, images, device=None, **generate_kwargs):
    """The book's three lines (processor, ``generate``, ``batch_decode``) on a list of images -> captions.

    Images are first resized to the processor's input size, so a batch of photos of any sizes works
    with every processor (the course's BLIP-2 processor does not resize). Captions stop at the checkpoint's
    ``max_new_tokens``, else at ``CAPTION_TOKENS``."""
    if len(images) == 0:
        raise ValueError("caption_images needs at least one image")
    device = device or get_device()
    size = processor.image_processor.size
    shape = (size["width"], size["height"]) if "height" in size else (size["shortest_edge"],) * 2
    images = [to_pil_rgb(image).resize(shape) for image in images]
    inputs = processor(images=images, return_tensors="pt").to(device)
    generate_kwargs.setdefault("max_new_tokens", model.generation_config.max_new_tokens or CAPTION_TOKENS)
    generated_ids = model.to(device).eval().generate(**inputs, **generate_kwargs)
    return [caption.strip() for caption in processor.batch_decode(generated_ids, skip_special_tokens=True)]


def caption_folder(folder, captioner, batch_size=32, csv_path=None):
    """Caption every readable image under ``folder`` with ``captioner`` (a function: list of PIL images ->
    list of captions), and write ``file,caption`` rows to ``csv_path`` (default: captions.csv in the
    folder). Returns (rows [(file, caption)], skipped [(file, reason)])."""
    rows, skipped = [], []
    for images, files, unreadable in photo_batches(folder, batch_size, "captioning photos"):
        skipped += unreadable
        if images:
            captions = captioner(images)
            if len(captions) != len(images):
                raise ValueError(f"the captioner returned {len(captions)} captions for {len(images)} images")
            rows += list(zip(files, captions))
    with open(csv_path or Path(folder) / CAPTIONS_FILE, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return rows, skipped


def read_captions(csv_path):
    """The (file, caption) rows of a captions CSV written by ``caption_folder``."""
    with open(csv_path, newline="") as file:
        reader = csv.reader(file)
        if next(reader, None) != ["file", "caption"]:
            raise ValueError(f"{csv_path} is not a captions CSV (its header must be file,caption)")
        return [tuple(row) for row in reader]


def search_captions(rows, keyword):
    """The (file, caption) rows whose caption contains ``keyword`` as a whole word (any case)."""
    if not isinstance(keyword, str) or not keyword.strip():
        raise ValueError(f"keyword must be a non-empty string, got {keyword!r}")
    pattern = re.compile(rf"\b{re.escape(keyword.strip())}\b", re.IGNORECASE)
    return [(file, caption) for file, caption in rows if pattern.search(caption)]
