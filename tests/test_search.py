"""The photo search engine of exercises 13 and 14 (homl16.search)."""

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from homl16 import search
from homl16.clip import clip_processor, small_clip, to_hf_clip, train_caption_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple", "white"]


@pytest.fixture(scope="module")
def tiny_clip():
    """A randomly initialised course CLIP as a transformers CLIPModel, with its CLIPProcessor."""
    tokenizer = train_caption_tokenizer([f"a {c} square" for c in COLOURS] * 5, vocab_size=60)
    model = small_clip(tokenizer, image_size=16, patch_size=4, embed_dim=16, image_depth=1, text_depth=1,
                       num_heads=2, projection_dim=8, seed=0)
    return to_hf_clip(model).eval(), clip_processor(tokenizer, image_size=16)


def make_folder(folder):
    """Six different images (squares of six colours at six places), in several modes."""
    folder.mkdir(exist_ok=True)
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (24, 24), "black")
        image.paste(Image.new("RGB", (10, 10), colour), (2 * i, 20 - 3 * i))
        image.convert(["RGB", "P", "L", "RGBA", "RGB", "RGB"][i]).save(folder / f"{i}_{colour}.png")
    return folder


def test_an_image_query_finds_its_planted_exact_duplicate_first(tmp_path, tiny_clip):
    model, processor = tiny_clip
    folder = make_folder(tmp_path / "photos")
    shutil.copy(folder / "2_blue.png", folder / "zz_copy_of_blue.png")
    index = search.build_photo_index(folder, model, processor, batch_size=4, device="cpu")
    assert len(index.files) == 7 and index.skipped == []
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)
    results = search.search_photos(index, model, processor, str(folder / "zz_copy_of_blue.png"), k=3,
                                   device="cpu")
    assert {path.name for path, _ in results[:2]} == {"2_blue.png", "zz_copy_of_blue.png"}
    assert results[1][1] == pytest.approx(1.0, abs=1e-5) and results[2][1] < results[1][1] - 1e-6
    pairs = [(index.files.index("2_blue.png"), index.files.index("zz_copy_of_blue.png"))]
    assert search.duplicate_recall_at_1(index, pairs) == 1.0


def test_duplicate_recall_counts_the_best_match_other_than_the_query():
    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = vectors[0]  # 1 duplicates 0 exactly
    vectors[3] = [0, 0, 0.6, 0.8]  # 3 is nearest to 2
    index = search.PhotoIndex(None, list("abcd"), vectors, search.exact_inner_product_index(vectors), [])
    assert search.duplicate_recall_at_1(index, [(0, 1), (2, 3)]) == 1.0
    assert search.duplicate_recall_at_1(index, [(0, 1), (2, 0)]) == 0.5


def test_faiss_and_numpy_rank_the_same_photos():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    faiss_scores, faiss_ids = search.faiss_search(search.exact_inner_product_index(vectors), queries, 10)
    numpy_scores, numpy_ids = search.numpy_search(vectors, queries, 10)
    assert np.array_equal(faiss_ids, numpy_ids)
    assert np.allclose(faiss_scores, numpy_scores, atol=1e-5)
    assert (np.diff(numpy_scores, axis=1) <= 0).all()  # best first


def test_the_index_survives_a_save_and_load_round_trip(tmp_path, tiny_clip):
    model, processor = tiny_clip
    folder = make_folder(tmp_path / "photos")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    index = search.build_photo_index(folder, model, processor, device="cpu")
    assert [file for file, _ in index.skipped] == ["broken.jpg"]
    search.save_photo_index(index, tmp_path / "saved")
    loaded = search.load_photo_index(tmp_path / "saved")
    assert loaded.files == index.files and loaded.skipped == index.skipped and loaded.folder == folder
    assert np.array_equal(loaded.vectors, index.vectors)
    query = search.embed_texts(model, processor, ["a red square"], "cpu")
    assert np.array_equal(search.faiss_search(loaded.index, query, 6)[1],
                          search.faiss_search(index.index, query, 6)[1])
    with pytest.raises(ValueError, match="no saved photo index"):
        search.load_photo_index(tmp_path)
    search.save_photo_index(index)  # into the photo folder: the two move together
    shutil.move(folder, tmp_path / "moved")
    moved = search.load_photo_index(tmp_path / "moved")
    assert moved.folder == tmp_path / "moved" and moved.path(0).is_file()


def test_text_and_image_queries_are_embedded_as_such(tiny_clip):
    model, processor = tiny_clip
    text = search.embed_query(model, processor, "a red square", "cpu")
    image = search.embed_query(model, processor, Image.new("RGB", (30, 20), "red"), "cpu")
    assert text.shape == image.shape == (1, 8)
    assert np.allclose(text, search.embed_texts(model, processor, ["a red square"], "cpu"))
    with torch.no_grad():  # the same as transformers' CLIPModel on the processed image
        pixels = processor(images=[Image.new("RGB", (30, 20), "red")], return_tensors="pt")["pixel_values"]
        direct = model.get_image_features(pixel_values=pixels).pooler_output
    assert np.allclose(image, torch.nn.functional.normalize(direct, dim=-1).numpy(), atol=1e-6)


def test_fill_photo_folder_plants_near_duplicates_and_mixes_modes(tmp_path):
    files = search.fill_photo_folder(tmp_path / "photos", num_scenes=15, num_duplicates=3, seed=0)
    names = [f.name for f in files]
    assert sum(n.startswith("photo_") for n in names) == 12
    assert sum(n.startswith("scene_") for n in names) == 15 + 3
    pairs = search.planted_duplicates(files)
    assert [(names[i], names[j]) for i, j in pairs] == [(f"scene_{k:04d}.png", f"scene_{k:04d}_copy.jpg")
                                                         for k in range(3)]
    modes = {Image.open(f).mode for f in files}
    assert {"RGB", "P", "L", "RGBA"} <= modes
    (tmp_path / "photos" / "scene_0000.png").unlink()  # a folder with images is left alone
    refilled = search.fill_photo_folder(tmp_path / "photos", num_scenes=15, num_duplicates=3)
    assert len(refilled) == len(files) - 1


def test_caption_folder_writes_one_row_per_readable_image(tmp_path):
    folder = make_folder(tmp_path / "photos")
    (folder / "sub").mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "sub" / "nested.jpg")
    (folder / "truncated.png").write_bytes((folder / "0_red.png").read_bytes()[:50])
    (folder / "notes.txt").write_text("not an image")

    def captioner(images):
        return [f"an image of {image.size[0]} pixels, mode {image.mode}" for image in images]

    rows, skipped = search.caption_folder(folder, captioner, batch_size=3)
    assert len(rows) == 7 and [file for file, _ in skipped] == ["truncated.png"]
    assert all(caption.endswith("mode RGB") for _, caption in rows)
    assert search.read_captions(folder / search.CAPTIONS_FILE) == rows
    with open(folder / search.CAPTIONS_FILE, newline="") as file:
        assert next(csv.reader(file)) == ["file", "caption"]
    assert ("sub/nested.jpg", "an image of 8 pixels, mode RGB") in rows
    assert [file for file, _ in search.search_captions(rows, "8 PIXELS")] == ["sub/nested.jpg"]
    assert search.search_captions(rows, "pixel") == []  # whole words only
    with pytest.raises(ValueError, match="returned 1 captions for 7 images"):
        search.caption_folder(folder, lambda images: ["one"])


def test_caption_images_runs_the_books_three_lines_on_photos_of_any_size(tmp_path):
    from test_blip2 import CAPTIONS, small_qformer
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from homl16.blip2 import (
        Blip2Captioner,
        attach_frozen_cnn,
        caption_lm_tokenizer,
        freeze,
        small_opt,
        to_hf_blip2,
    )

    tokenizer = caption_lm_tokenizer(CAPTIONS)
    torch.manual_seed(0)
    lm = freeze(small_opt(tokenizer, hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32))
    captioner = Blip2Captioner(small_qformer(image_dim=114), lm).eval()
    hf, processor = to_hf_blip2(captioner, tokenizer, torch.zeros(1, 112, 1, 1), torch.ones(1, 112, 1, 1),
                                max_new_tokens=5)
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model = attach_frozen_cnn(Blip2ForConditionalGeneration.from_pretrained(tmp_path))
    processor = Blip2Processor.from_pretrained(tmp_path)
    photos = [Image.new("RGB", (90, 40), "red"), Image.new("L", (64, 64), 128),
              Image.new("RGB", (64, 64), "blue")]
    captions = search.caption_images(model, processor, photos, device="cpu")
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    resized = [photo.convert("RGB").resize((64, 64)) for photo in photos]
    # the book's three lines
    inputs = processor(images=resized, text=[""] * len(resized), return_tensors="pt")
    expected = processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)
    assert captions == [c.strip() for c in expected]


def test_caption_images_bounds_the_caption_length_when_the_checkpoint_does_not():
    """The hub's BLIP-2 sets no ``max_new_tokens``: ``generate`` would warn and stop at its default length."""
    from types import SimpleNamespace

    from transformers import BatchFeature, GenerationConfig

    class Model(torch.nn.Module):
        def __init__(self, max_new_tokens):
            super().__init__()
            self.generation_config, self.calls = GenerationConfig(max_new_tokens=max_new_tokens), []

        def generate(self, **kwargs):
            self.calls.append(kwargs)
            return torch.zeros(len(kwargs["pixel_values"]), 3, dtype=torch.long)

    class Processor:
        image_processor = SimpleNamespace(size={"height": 8, "width": 8})

        def __call__(self, images, return_tensors):
            return BatchFeature({"pixel_values": torch.zeros(len(images), 3, 8, 8)})

        def batch_decode(self, ids, skip_special_tokens):
            return [" a cat"] * len(ids)

    for checkpoint_limit, used in [(None, search.CAPTION_TOKENS), (16, 16)]:
        model = Model(checkpoint_limit)
        photos = [Image.new("RGB", (9, 9))]
        assert search.caption_images(model, Processor(), photos, device="cpu") == ["a cat"]
        assert model.calls[0]["max_new_tokens"] == used
