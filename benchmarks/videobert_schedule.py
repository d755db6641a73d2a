"""Notebook 10's VideoBERT run under each learning-rate schedule and three seeds, outside the test suite.

    python benchmarks/videobert_schedule.py    # linear, one_cycle, before_refactor; seeds 0 1 2
    python benchmarks/videobert_schedule.py --schedules linear --seeds 0

Builds the notebook's data, visual words and 2-layer model with homl16.videobert's own functions and the
notebook's settings (800 training videos, 8 x 8 visual words, 12 epochs of 32, lr 1e-3, alignment weight 20),
seeded as the notebook is under ``HOML16_SEED_OFFSET`` = seed (offset 0 is the committed run). Prints and
writes to benchmarks/videobert_schedule.md the zero-shot verb and noun accuracy and the alignment accuracy
of every (schedule, seed), and their mean, min and max per schedule (rows not re-run are kept).
Variants: train_videobert's "linear" and "one_cycle" schedules; the same with "_shared_seed", masks and
negatives drawn from a generator seeded like train()'s batch order (as at commit 38372c8); and
"before_refactor", the loop of commit 7cb5003 replayed step for step (linear schedule, batch order drawn
from the masking generator).
"""

import argparse
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import homl16
from homl16.bert import load_bert, load_bert_tokenizer
from homl16.data.shapes import ACTIONS, SHAPES, shapes_video_dataset
from homl16.efficientnet import cached_feature_maps
from homl16.notebook import quiet_libraries
from homl16.train import train
from homl16.videobert import (
    NARRATION_TEMPLATES,
    VERBS,
    HierarchicalKMeans,
    VideoBert,
    _linear_warmup_decay,
    alignment_scores,
    clip_features,
    extend_vocabulary,
    mismatched_texts,
    narration,
    project_centroids,
    train_videobert,
    video_frames,
    videobert_losses,
    zero_shot_predictions,
)

TABLE = Path(__file__).resolve().parent / "videobert_schedule.md"
NUM_TRAIN, NUM_TEST, NUM_FRAMES, K, DEPTH = 800, 200, 8, 8, 2
EPOCHS, LR, ALIGNMENT_WEIGHT = 12, 1e-3, 20
FIGURES = ("verb", "noun", "alignment")


def narrations(videos, seed):
    rng = np.random.default_rng(seed)
    return [narration(ACTIONS[a], c, s, int(rng.integers(len(NARRATION_TEMPLATES))))
            for a, c, s in zip(videos["label"], videos["colour"], videos["shape"])]


def setup():
    """The notebook's data and visual words (independent of the seed offset)."""
    videos = {split: shapes_video_dataset(n, seed=0, split=split, num_frames=NUM_FRAMES, max_objects=1)
              for split, n in [("train", NUM_TRAIN), ("test", NUM_TEST)]}
    train_videos, test_videos = videos["train"], videos["test"]

    def frame_features(frames):
        maps = cached_feature_maps(frames.flatten(0, 1), stride=16, device="cpu")
        return maps.flatten(1).reshape(len(frames), frames.shape[1], -1)

    clips_train, scales = clip_features(frame_features(video_frames(train_videos)), frames_per_clip=4)
    clips_test, _ = clip_features(frame_features(video_frames(test_videos)), frames_per_clip=4, scales=scales)
    tree = HierarchicalKMeans(K, DEPTH, seed=0).fit(clips_train.flatten(0, 1))
    return dict(train_videos=train_videos, test_videos=test_videos, tree=tree,
                train_texts=narrations(train_videos, 0), test_texts=narrations(test_videos, 1),
                tokens_train=tree.labels_.reshape(NUM_TRAIN, -1),
                tokens_test=tree.predict(clips_test.flatten(0, 1)).reshape(NUM_TEST, -1))


def train_as_before(model, tokenizer, texts, video_tokens, meanings, seed):
    """The loop of train_videobert before it moved to train.train (commit 7cb5003), step for step: the
    linear schedule, and one generator (seeded ``seed``) drawing the batch order, the masks and the negatives
    in turn. train() only counts the steps and steps the optimiser; the indices it draws are ignored."""
    generator = torch.Generator().manual_seed(seed)
    token_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    steps = EPOCHS * len(texts) // 32
    scheduler = _linear_warmup_decay(optimizer, steps)
    state = {"order": torch.randperm(len(texts), generator=generator), "position": 0}

    def batch_loss(_):
        if state["position"] + 32 > len(texts):
            state["order"], state["position"] = torch.randperm(len(texts), generator=generator), 0
        index = state["order"][state["position"]:state["position"] + 32].tolist()
        state["position"] += 32
        losses = videobert_losses(model, tokenizer, [token_ids[i] for i in index], video_tokens[index],
                                  [meanings[i] for i in index], generator)
        return sum(losses.values()) + (ALIGNMENT_WEIGHT - 1) * losses["alignment"]

    train(model, batch_loss, len(texts), optimizer, steps=steps, batch_size=32, scheduler=scheduler,
          desc="VideoBERT (as before)")


def run(data, tokenizer, schedule, seed):
    """Train and evaluate one model, seeded as notebook 10 under HOML16_SEED_OFFSET=seed -> figures."""
    os.environ["HOML16_SEED_OFFSET"] = str(seed)
    from transformers import BertForMaskedLM
    homl16.set_seed(42)
    bert = load_bert(BertForMaskedLM)
    text_embeddings = bert.get_input_embeddings().weight.detach().clone()
    first = extend_vocabulary(bert, project_centroids(data["tree"].leaf_centroids, text_embeddings))
    tokens_train, tokens_test = data["tokens_train"] + first, data["tokens_test"] + first
    texts = data["train_texts"]
    text_ids = sorted({i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]})
    output_ids = torch.tensor(text_ids + list(range(first, first + data["tree"].num_leaves)))
    model = VideoBert(bert, num_layers=2, output_ids=output_ids, alignment_pooling="mean")
    meanings = list(zip(data["train_videos"]["label"], data["train_videos"]["shape"]))
    homl16.set_seed(42)
    if schedule == "before_refactor":
        train_as_before(model, tokenizer, texts, tokens_train, meanings, seed=42 + seed)
    else:  # "<schedule>" or "<schedule>_shared_seed" (masks seeded like train()'s batch order, as at 38372c8)
        name, shared = schedule.removesuffix("_shared_seed"), schedule.endswith("_shared_seed")
        train_videobert(model, tokenizer, texts, tokens_train, meanings, epochs=EPOCHS, batch_size=32, lr=LR,
                        alignment_weight=ALIGNMENT_WEIGHT, seed=42, schedule=name,
                        mask_seed=42 if shared else None)
    test = data["test_videos"]
    verbs, nouns = list(VERBS.values()), list(SHAPES)
    true_verbs = torch.tensor([verbs.index(VERBS[ACTIONS[a]]) for a in test["label"]])
    true_nouns = torch.tensor([nouns.index(s) for s in test["shape"]])
    verb_p, noun_p = zero_shot_predictions(model, tokenizer, tokens_test, [verbs, nouns])
    negatives = mismatched_texts(data["test_texts"], list(zip(test["label"], test["shape"])), seed=0)
    positive = alignment_scores(model, tokenizer, data["test_texts"], tokens_test)
    negative = alignment_scores(model, tokenizer, negatives, tokens_test)
    return {"verb": (verb_p.argmax(1) == true_verbs).float().mean().item(),
            "noun": (noun_p.argmax(1) == true_nouns).float().mean().item(),
            "alignment": ((positive > 0.5).float().mean().item()
                          + (negative < 0.5).float().mean().item()) / 2}


def read_rows():
    rows = {}
    if TABLE.exists():
        for line in TABLE.read_text().splitlines():
            match = re.match(r"^\| (\w+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", line)
            if match:
                rows[(match[1], int(match[2]))] = dict(zip(FIGURES, map(float, match.groups()[2:])))
    return rows


def write(rows):
    lines = ["# VideoBERT (notebook 10): learning-rate schedule x seed", "",
             "Written by `benchmarks/videobert_schedule.py` (CPU). Seed = `HOML16_SEED_OFFSET` (0 is the "
             "committed notebook run). Test accuracies: zero-shot verb (chance 0.167), noun (chance 0.25), "
             "alignment (chance 0.5).", "",
             "| schedule | seed | verb | noun | alignment |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {seed} | " + " | ".join(f"{r[f]:.3f}" for f in FIGURES) + " |"
              for (s, seed), r in sorted(rows.items())]
    lines += ["", "| schedule | seeds | verb mean (min-max) | noun mean (min-max) "
              "| alignment mean (min-max) |",
              "|---|---|---|---|---|"]
    for schedule in sorted({s for s, _ in rows}):
        runs = [r for (s, _), r in rows.items() if s == schedule]
        lines.append(f"| {schedule} | {len(runs)} | " + " | ".join(
            f"{statistics.mean(r[f] for r in runs):.3f} ({min(r[f] for r in runs):.3f}-"
            f"{max(r[f] for r in runs):.3f})" for f in FIGURES) + " |")
    TABLE.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", nargs="+", default=["linear", "one_cycle", "linear_shared_seed",
                                                           "one_cycle_shared_seed", "before_refactor"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    quiet_libraries()
    data, tokenizer, rows = setup(), load_bert_tokenizer(), read_rows()
    for schedule in args.schedules:
        for seed in args.seeds:
            start = time.perf_counter()
            rows[(schedule, seed)] = run(data, tokenizer, schedule, seed)
            print(schedule, seed, {k: round(v, 3) for k, v in rows[(schedule, seed)].items()},
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            write(rows)


if __name__ == "__main__":
    main()
