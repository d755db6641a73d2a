import pytest
import torch

from homl16 import videobert
from homl16.videobert import (
    PROBE,
    HierarchicalKMeans,
    VideoBert,
    clip_features,
    cluster_purity,
    extend_vocabulary,
    kmeans,
    make_sequences,
    mask_tokens,
    mismatched_texts,
    narration,
    project_centroids,
    train_videobert,
    videobert_losses,
    vocabulary_size_arithmetic,
    zero_shot_predictions,
)


def blobs(n_per_blob=30, centers=8, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    means = 10 * torch.randn(centers, dim, generator=generator)
    X = (means[:, None] + torch.randn(centers, n_per_blob, dim, generator=generator)).reshape(-1, dim)
    return X, torch.arange(centers).repeat_interleave(n_per_blob)


@pytest.fixture(scope="module")
def tokenizer():
    from homl16.bert import load_bert_tokenizer

    return load_bert_tokenizer()


def tiny_bert(vocab_size=30522):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForMaskedLM(config)


def test_chapter_vocabulary_arithmetic():
    assert vocabulary_size_arithmetic(12, 4) == "12 ** 4 = 20,736 = 12 x 12 x 12 x 12"
    assert HierarchicalKMeans(12, 4).max_leaves == 20_736


def test_kmeans_finds_separated_blobs_and_matches_sklearn_inertia():
    from sklearn.cluster import KMeans

    X, labels = blobs()
    centroids, assignments, inertia = kmeans(X, 8, seed=0)
    assert centroids.shape == (8, 5) and cluster_purity(assignments, labels) == 1.0
    reference = KMeans(8, n_init=10, random_state=0).fit(X.numpy()).inertia_
    assert inertia == pytest.approx(reference, rel=1e-3)
    assert torch.equal(assignments, kmeans(X, 8, seed=0)[1])


def test_kmeans_with_more_clusters_than_points():
    X = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    centroids, assignments, inertia = kmeans(X, 5)
    assert len(centroids) == 2 and inertia == 0.0 and assignments[1] == assignments[2]


def test_hierarchical_kmeans_one_leaf_per_vector_and_k_to_the_depth_leaves():
    X, _ = blobs(n_per_blob=40)
    tree = HierarchicalKMeans(k=3, depth=2, seed=0).fit(X)
    assert tree.num_leaves == 3 ** 2
    assert tree.labels_.shape == (len(X),)
    assert tree.labels_.min() >= 0 and tree.labels_.max() < tree.num_leaves
    assert torch.equal(torch.unique(tree.labels_), torch.arange(tree.num_leaves))  # no empty leaf
    assert torch.equal(tree.predict(X), tree.labels_)  # walking the tree finds each training vector's leaf
    flat_inertia = (X - X.mean(0)).pow(2).sum().item()
    assert 0 < tree.inertia_ < flat_inertia


def test_hierarchical_kmeans_has_fewer_leaves_when_data_is_small():
    X = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    tree = HierarchicalKMeans(k=4, depth=3).fit(X)
    assert tree.num_leaves <= len(X) < tree.max_leaves
    assert torch.equal(torch.unique(tree.labels_), torch.arange(tree.num_leaves))


def test_hierarchical_kmeans_is_deterministic_for_a_seed():
    X, _ = blobs(n_per_blob=20, centers=10)
    first = HierarchicalKMeans(4, 2, seed=3).fit(X)
    again = HierarchicalKMeans(4, 2, seed=3).fit(X)
    assert torch.equal(first.labels_, again.labels_)
    assert torch.equal(first.leaf_centroids, again.leaf_centroids)


def test_hierarchical_kmeans_checks_inputs():
    with pytest.raises(ValueError, match="k must be"):
        HierarchicalKMeans(1, 2)
    with pytest.raises(ValueError, match="depth"):
        HierarchicalKMeans(3, 0)
    with pytest.raises(RuntimeError, match="fit"):
        HierarchicalKMeans(3, 2).predict(torch.randn(4, 2))
    with pytest.raises(TypeError, match="floating"):
        HierarchicalKMeans(3, 2).fit(torch.ones(4, 2, dtype=torch.long))


def test_clip_features_pool_frames_and_see_direction():
    frames = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)
    features, scales = clip_features(frames, 4, motion_weight=1.0, scales=torch.ones(2))
    assert features.shape == (2, 2, 6)
    assert torch.allclose(features[0, 0, :3], frames[0, :4].mean(0))
    assert torch.allclose(features[0, 0, 3:], frames[0, 3] - frames[0, 0])
    reversed_features, _ = clip_features(frames.flip(1), 4, motion_weight=1.0, scales=torch.ones(2))
    assert torch.allclose(reversed_features[:, :, 3:], -features.flip(1)[:, :, 3:])  # opposite motion
    with pytest.raises(ValueError, match="divide"):
        clip_features(frames, 3)


def test_vocabulary_extension_keeps_the_text_embeddings():
    model = tiny_bert(vocab_size=100)
    old = model.get_input_embeddings().weight.detach().clone()
    centroids = torch.randn(7, 20)
    visual = project_centroids(centroids, old)
    first_id = extend_vocabulary(model, visual)
    new = model.get_input_embeddings().weight
    assert first_id == 100 and new.shape == (107, 32)
    assert torch.equal(new[:100], old)  # the original text embeddings are unchanged
    assert torch.equal(new[100:], visual)
    assert model.cls.predictions.decoder.weight is new  # still tied to the output layer
    assert model.cls.predictions.decoder.bias.shape == (107,)
    with pytest.raises(ValueError, match="shape"):
        extend_vocabulary(model, torch.randn(3, 16))


def test_projected_centroids_keep_relative_distances():
    centroids, _ = blobs(n_per_blob=3, centers=8, dim=300)
    projected = project_centroids(centroids, torch.randn(50, 384))
    before, after = torch.pdist(centroids), torch.pdist(projected)
    assert torch.corrcoef(torch.stack([before, after]))[0, 1] > 0.9


def test_make_sequences_layout(tokenizer):
    video = torch.tensor([[30522, 30523], [30524, 30525]])
    input_ids, types, attention = make_sequences(tokenizer, ["push the circle", "lift it"], video)
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0, :5].tolist())
    assert tokens == ["[CLS]", "push", "the", "circle", "[SEP]"]
    assert input_ids[0, 5:].tolist() == [30522, 30523, tokenizer.sep_token_id]
    assert types[0].tolist() == [0] * 5 + [1] * 3
    assert attention[1].tolist() == [1] * 7 + [0]  # the shorter text is padded
    only_video, video_types, _ = make_sequences(tokenizer, video_tokens=video)
    assert only_video[0].tolist() == [tokenizer.cls_token_id, 30522, 30523, tokenizer.sep_token_id]
    with pytest.raises(ValueError, match="need texts"):
        make_sequences(tokenizer)


def test_mask_tokens_only_masks_allowed_positions():
    ids = torch.arange(40).reshape(4, 10)
    maskable = torch.zeros(4, 10, dtype=torch.bool)
    maskable[:, 2:6] = True
    masked, labels = mask_tokens(ids, maskable, mask_id=-1, probability=0.5,
                                 generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[~maskable].any() and chosen.any(dim=1).all()
    assert torch.equal(masked[chosen], torch.full((int(chosen.sum()),), -1))
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])


def test_narrations_and_negatives():
    assert narration("moves right", "red", "circle") == "now let me show you how to push the circle"
    assert PROBE.count("[MASK]") == 2
    texts, meanings = ["a", "b", "c", "d"], [0, 0, 1, 1]
    negatives = mismatched_texts(texts, meanings, seed=0)
    assert all(meanings[texts.index(n)] != m for n, m in zip(negatives, meanings))
    with pytest.raises(ValueError, match="action"):
        narration("jumps", "red", "circle")


def test_videobert_trains_without_touching_text_embeddings(tokenizer):
    model = tiny_bert()
    first_id = extend_vocabulary(model, torch.randn(6, 32))
    before = model.get_input_embeddings().weight.detach().clone()
    videobert = VideoBert(model, train_from_layer=1)
    assert not any(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    texts = ["now let me show you how to push the circle", "now let me show you how to lift the square"] * 2
    video = torch.tensor([[0, 1], [2, 3], [0, 1], [4, 5]]) + first_id
    losses = videobert_losses(videobert, tokenizer, texts, video, meanings=[0, 1, 0, 2],
                              generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"text_mlm", "video_mlm", "joint_mlm", "alignment"}
    optimizer = torch.optim.AdamW([p for p in videobert.parameters() if p.requires_grad], lr=1e-2)
    sum(losses.values()).backward()
    optimizer.step()
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert videobert.alignment_head[0].weight.grad is not None
    verbs, nouns = zero_shot_predictions(videobert, tokenizer, video, [["push", "lift", "drop"],
                                                                       ["circle", "square"]])
    assert verbs.shape == (4, 3) and nouns.shape == (4, 2)
    assert torch.allclose(verbs.sum(1), torch.ones(4)) and torch.allclose(nouns.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="candidate lists"):
        zero_shot_predictions(videobert, tokenizer, video, [["push"]])


def test_mean_pooled_alignment_ignores_padding():
    model = VideoBert(tiny_bert(vocab_size=50), alignment_pooling="mean")
    hidden = torch.randn(2, 4, 32)
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    changed = hidden.clone()
    changed[1, 2:] = 100.0  # padding positions
    assert torch.allclose(model.alignment_logit(hidden, attention_mask),
                          model.alignment_logit(changed, attention_mask))
    assert torch.allclose(model.alignment_logit(hidden, attention_mask)[1],
                          model.alignment_head(hidden[1, :2].mean(0)).squeeze(-1))
    with pytest.raises(ValueError, match="alignment_pooling"):
        VideoBert(tiny_bert(vocab_size=50), alignment_pooling="max")


def test_train_videobert_rejects_a_negative_alignment_weight(tokenizer):
    model = VideoBert(tiny_bert())
    with pytest.raises(ValueError, match="alignment_weight"):
        train_videobert(model, tokenizer, ["push the circle"] * 2, torch.zeros(2, 2, dtype=torch.long),
                        [0, 1], epochs=1, alignment_weight=-1.0)


def test_linear_warmup_decay_climbs_for_a_tenth_then_falls_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = videobert._linear_warmup_decay(optimizer, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.02
    assert optimizer.param_groups[0]["lr"] == 0.0
