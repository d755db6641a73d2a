"""Perceiver and Perceiver IO: Fourier features, a latent bottleneck, and output queries.

Shapes: B = batch, M = input tokens (e.g. pixels), C = input channels, N = latents, D = latent size,
O = output queries, Q = query size. The inputs are never attended to by themselves: N latents
cross-attend to the M inputs (N * M scores, linear in M), then a latent transformer refines the latents
(N² scores, independent of M). Perceiver IO decodes with O task-specific output queries that
cross-attend to the latents (O * N scores). Attention runs through ``homl16.transformer.MultiHeadAttention``
(SDPA).

The layout (a cross-attention layer, then ``num_blocks`` repeats of a latent transformer whose weights are
shared) is the one of transformers' ``PerceiverModel``, so the course's encoder can be converted to it
(``to_hf_perceiver``); ``cross_attend_every_block=True`` gives the original Perceiver's repeated
cross-attention instead.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_images, check_rank, check_tensor
from homl16.train import train
from homl16.transformer import EncoderBlock, MultiHeadAttention
from homl16.weights import copy_weights, linear_pairs

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, as in transformers' Perceiver


def grid_positions(sizes, device=None):
    """Coordinates of every cell of a grid, each axis spread evenly over [-1, 1].

    sizes: e.g. (H, W) -> (H * W, 2) float, row-major (the order of ``x.flatten``), so cell (i, j)
    is row ``i * W + j`` holding (y_i, x_j).
    """
    sizes = tuple(sizes)
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"grid sizes must be positive, got {sizes}")
    axes = [torch.linspace(-1.0, 1.0, int(s), device=device) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def fourier_features(positions, num_bands, max_resolution):
    """The Perceiver's Fourier features of positions in [-1, 1].

    positions: (P, d); for each dimension, K = ``num_bands`` frequencies f_k spaced evenly from 1 to
    μ/2 (μ = ``max_resolution`` of that dimension, the Nyquist frequency of a μ-pixel signal).
    -> (P, d(2K + 1)) = [x_1..x_d, sin(π f_k x_i) for all i, k, cos(π f_k x_i) for all i, k]
    (the raw coordinates, then the sines, then the cosines, in transformers' order).
    """
    check_rank("positions", positions, 2, "(points, dimensions)")
    if num_bands < 1:
        raise ValueError(f"num_bands must be at least 1, got {num_bands}")
    d = positions.shape[1]
    if isinstance(max_resolution, (int, float)):
        max_resolution = (max_resolution,) * d
    max_resolution = tuple(max_resolution)
    if len(max_resolution) != d:
        raise ValueError(f"max_resolution has {len(max_resolution)} entries for {d}-D positions")
    frequencies = torch.stack([torch.linspace(1.0, r / 2, num_bands, device=positions.device)
                               for r in max_resolution])  # (d, K)
    angles = math.pi * (positions[:, :, None] * frequencies).flatten(1)  # (P, d * K)
    return torch.cat([positions, angles.sin(), angles.cos()], dim=-1)


class FourierPositionalEncoding(nn.Module):
    """Turn an image into a sequence of pixel tokens: each pixel's channel values, concatenated with
    the Fourier features of its (y, x) position.

    forward(images (B, C, H, W)) -> (B, H * W, C + 2(2K + 1)); e.g. RGB with K = 6: 3 + 26 = 29 dims.
    ``max_resolution`` defaults to the image size. The features are fixed (a buffer, not learned).
    """

    def __init__(self, image_size, num_bands=6, max_resolution=None, in_channels=3):
        super().__init__()
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution or self.image_size)
        self.in_channels = in_channels
        features = fourier_features(grid_positions(self.image_size), num_bands, self.max_resolution)
        self.register_buffer("features", features, persistent=False)  # (H * W, 2(2K + 1))

    @property
    def output_dim(self):
        """Channels of each token: C + d(2K + 1)."""
        return self.in_channels + self.features.shape[1]

    def forward(self, images):
        check_images("images", images, self.in_channels, *self.image_size)
        pixels = images.flatten(2).transpose(1, 2)  # (B, H * W, C)
        positions = self.features.to(pixels.dtype).expand(len(images), -1, -1)
        return torch.cat([pixels, positions], dim=-1)


class CrossAttentionBlock(nn.Module):
    """Queries attend to a context, then a feed-forward layer (pre-norm, as in transformers' PerceiverLayer).

    x = [x +] Attention(LN(x), LN(context)); x = x + MLP(LN(x)).
    forward(x (B, N, D), context (B, M, C)) -> (B, N, D), and with ``return_attention=True`` also the
    weights (B, H, N, M). ``use_query_residual=False`` drops the first residual (Perceiver IO's decoder,
    where queries are positions and outputs are predictions).
    """

    def __init__(self, embed_dim, context_dim, num_heads=1, widening_factor=1, use_query_residual=True,
                 dropout=0.0):
        super().__init__()
        self.query_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.context_norm = nn.LayerNorm(context_dim, eps=LAYER_NORM_EPS)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout, context_dim=context_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, widening_factor * embed_dim), nn.GELU(),
                                 nn.Linear(widening_factor * embed_dim, embed_dim))
        self.use_query_residual = use_query_residual

    def forward(self, x, context, return_attention=False):
        check_rank("context", context, 3, "(batch, tokens, channels)")
        attended = self.attn(self.query_norm(x), self.context_norm(context),
                             return_attention=return_attention)
        if return_attention:
            attended, weights = attended
        x = x + attended if self.use_query_residual else attended
        x = x + self.mlp(self.norm(x))
        return (x, weights) if return_attention else x


def latent_transformer(latent_dim, num_layers, num_heads, widening_factor=4, dropout=0.0):
    """``num_layers`` pre-norm self-attention blocks over the latents: (B, N, D) -> (B, N, D)."""
    return nn.Sequential(*(EncoderBlock(latent_dim, num_heads, widening_factor * latent_dim, dropout,
                                        eps=LAYER_NORM_EPS) for _ in range(num_layers)))


class PerceiverEncoder(nn.Module):
    """Learned latents (N, D) cross-attend to the inputs, then a latent transformer; ``num_blocks`` times.

    forward(inputs (B, M, input_dim)) -> latents (B, N, D); with ``return_attention=True`` also the first
    cross-attention's weights (B, H, N, M).

    - ``cross_attend_every_block=False`` (default, Perceiver IO and transformers' ``PerceiverModel``): one
      cross-attention, then ``num_blocks`` latent transformers. True: the original Perceiver, which
      cross-attends to the inputs again at the start of every block.
    - ``share_weights=True``: every block reuses one latent transformer (and the repeated cross-attentions
      after the first share one module), so depth costs compute but no parameters; False: each its own.
    """

    def __init__(self, input_dim, num_latents=32, latent_dim=64, num_blocks=2, self_attends_per_block=2,
                 num_self_attention_heads=4, num_cross_attention_heads=1, self_attention_widening_factor=4,
                 cross_attention_widening_factor=1, share_weights=True, cross_attend_every_block=False,
                 dropout=0.0):
        super().__init__()
        if num_blocks < 1 or num_latents < 1 or self_attends_per_block < 1:
            raise ValueError("num_blocks, num_latents and self_attends_per_block must be at least 1")
        self.input_dim, self.num_latents, self.latent_dim = input_dim, num_latents, latent_dim
        self.num_blocks, self.self_attends_per_block = num_blocks, self_attends_per_block
        self.num_self_attention_heads, self.num_cross_attention_heads = (num_self_attention_heads,
                                                                         num_cross_attention_heads)
        self.self_attention_widening_factor = self_attention_widening_factor
        self.cross_attention_widening_factor = cross_attention_widening_factor
        self.share_weights, self.cross_attend_every_block = share_weights, cross_attend_every_block
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) * 0.02)
        num_cross = (min(2, num_blocks) if share_weights else num_blocks) if cross_attend_every_block else 1
        self.cross_attends = nn.ModuleList(
            CrossAttentionBlock(latent_dim, input_dim, num_cross_attention_heads,
                                cross_attention_widening_factor, dropout=dropout)
            for _ in range(num_cross))
        self.latent_transformers = nn.ModuleList(
            latent_transformer(latent_dim, self_attends_per_block, num_self_attention_heads,
                               self_attention_widening_factor, dropout)
            for _ in range(1 if share_weights else num_blocks))

    def forward(self, inputs, return_attention=False):
        check_rank("inputs", inputs, 3, "(batch, tokens, channels)")
        if inputs.shape[-1] != self.input_dim:
            raise ValueError(f"inputs must have {self.input_dim} channels, got {inputs.shape[-1]}")
        x = self.latents.expand(len(inputs), -1, -1)  # (B, N, D)
        weights = None
        for block in range(self.num_blocks):
            if block == 0 or self.cross_attend_every_block:
                cross = self.cross_attends[min(block, len(self.cross_attends) - 1)]
                if block == 0 and return_attention:
                    x, weights = cross(x, inputs, return_attention=True)
                else:
                    x = cross(x, inputs)
            x = self.latent_transformers[min(block, len(self.latent_transformers) - 1)](x)
        return (x, weights) if return_attention else x


class PerceiverClassifier(nn.Module):
    """Image classifier on raw pixels: Fourier-encoded pixel tokens -> Perceiver encoder -> mean of
    the latents -> LayerNorm -> linear head.

    forward(images (B, C, H, W)) -> logits (B, num_classes). ``encoder_options`` go to ``PerceiverEncoder``.
    """

    def __init__(self, image_size, in_channels=3, num_classes=10, num_bands=6, max_resolution=None,
                 **encoder_options):
        super().__init__()
        self.encode_pixels = FourierPositionalEncoding(image_size, num_bands, max_resolution, in_channels)
        self.encoder = PerceiverEncoder(self.encode_pixels.output_dim, **encoder_options)
        self.norm = nn.LayerNorm(self.encoder.latent_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(self.encoder.latent_dim, num_classes)

    def forward(self, images, return_attention=False):
        latents = self.encoder(self.encode_pixels(images), return_attention=return_attention)
        if return_attention:
            latents, weights = latents
        logits = self.head(self.norm(latents.mean(dim=1)))
        return (logits, weights) if return_attention else logits


class PerceiverIODecoder(nn.Module):
    """Perceiver IO's decoder: O output queries cross-attend to the latents, one prediction per query.

    forward(queries (B, O, Q), latents (B, N, D)) -> (B, O, out_dim). Any number of queries, of any
    kind (positions, a class query, ...): the output's length is the number of queries.
    """

    def __init__(self, query_dim, latent_dim, out_dim, num_heads=1, widening_factor=1,
                 use_query_residual=False):
        super().__init__()
        self.cross = CrossAttentionBlock(query_dim, latent_dim, num_heads, widening_factor,
                                         use_query_residual)
        self.out = nn.Linear(query_dim, out_dim)

    def forward(self, queries, latents):
        check_rank("queries", queries, 3, "(batch, queries, query_dim)")
        return self.out(self.cross(queries, latents))


class PerceiverIOSegmenter(nn.Module):
    """Per-pixel classification with Perceiver IO: encode Fourier-encoded pixels into latents, then decode
    with one query per pixel, built from that pixel's Fourier features (a linear map to ``query_dim``).

    forward(images (B, C, H, W)) -> logits (B, num_classes, H, W), the layout ``F.cross_entropy`` expects.
    """

    def __init__(self, image_size, in_channels=3, num_classes=5, num_bands=6, query_dim=64, decoder_heads=1,
                 decoder_widening_factor=1, decoder_query_residual=False, **encoder_options):
        super().__init__()
        self.encode_pixels = FourierPositionalEncoding(image_size, num_bands, in_channels=in_channels)
        self.encoder = PerceiverEncoder(self.encode_pixels.output_dim, **encoder_options)
        self.query_embed = nn.Linear(self.encode_pixels.features.shape[1], query_dim)
        self.decoder = PerceiverIODecoder(query_dim, self.encoder.latent_dim, num_classes, decoder_heads,
                                          decoder_widening_factor, decoder_query_residual)

    def output_queries(self, batch_size):
        """(B, H * W, query_dim): one query per pixel, from its position only."""
        return self.query_embed(self.encode_pixels.features).expand(batch_size, -1, -1)

    def forward(self, images):
        latents = self.encoder(self.encode_pixels(images))
        logits = self.decoder(self.output_queries(len(images)), latents)  # (B, H * W, classes)
        H, W = self.encode_pixels.image_size
        return logits.transpose(1, 2).reshape(len(images), -1, H, W)


class MultimodalInputs(nn.Module):
    """Several modalities as one input array for a Perceiver, as in Perceiver IO: each modality's tokens
    (B, N_i, C_i) are padded to ``dim`` channels with a learned vector of that modality (at least
    ``min_padding`` channels: the modality embedding that tells the model where a token comes from),
    then all tokens are concatenated.

    forward({name: (B, N_i, C_i)}) -> (B, sum N_i, dim); ``dim`` is max C_i + ``min_padding``.
    """

    def __init__(self, channels, min_padding=4):
        super().__init__()
        if not channels:
            raise ValueError("channels must map at least one modality name to its channel count")
        self.channels = dict(channels)
        self.dim = max(self.channels.values()) + min_padding
        self.padding = nn.ParameterDict({name: nn.Parameter(torch.randn(self.dim - c) * 0.02)
                                         for name, c in self.channels.items()})

    def forward(self, inputs):
        if set(inputs) != set(self.channels):
            raise ValueError(f"expected modalities {sorted(self.channels)}, got {sorted(inputs)}")
        parts = []
        for name, tokens in inputs.items():
            check_rank(name, tokens, 3, "(batch, tokens, channels)")
            if tokens.shape[-1] != self.channels[name]:
                raise ValueError(f"{name} must have {self.channels[name]} channels, got {tokens.shape[-1]}")
            pad = self.padding[name].to(tokens.dtype).expand(*tokens.shape[:2], -1)
            parts.append(torch.cat([tokens, pad], dim=-1))
        return torch.cat(parts, dim=1)


# --- cost: attention scores, time and memory as the input grows ---------------------------------------

def attention_score_counts(num_inputs, num_latents):
    """Scores one head computes for one input of ``num_inputs`` tokens:
    {"self_attention": M², "cross_attention": M * N}; e.g. 224² = 50,176 pixels, 512 latents."""
    if num_inputs < 1 or num_latents < 1:
        raise ValueError("num_inputs and num_latents must be positive")
    return {"self_attention": num_inputs ** 2, "cross_attention": num_inputs * num_latents}


def saved_activation_bytes(model, x):
    """Bytes of the tensors autograd saves for the backward pass during ``model(x)`` (the activation
    memory of training, on any device); each storage counted once, parameters excluded."""
    check_tensor("x", x)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x.requires_grad_(False))
    return sum(seen.values())


def time_training_steps(model, inputs, repeats=3, warmup=1, forward=None, desc="timing"):
    """Median seconds of one training step of ``model`` on each tensor of the list ``inputs``.

    A step is the course's training loop (``homl16.train.train``) minimising ``forward(x).sum()``
    (``forward`` defaults to ``model``; give one to time e.g. a transformers model's output) with a
    zero learning rate, so the weights stay as they are: forward, backward and an optimiser step.
    Each input gets ``warmup`` untimed steps, then ``repeats`` timed ones. -> list of seconds.
    """
    forward = forward or model
    runs = [x for x in inputs for _ in range(warmup + repeats)]
    step_inputs = iter(runs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    # one item and batches of one: train logs "seconds" after every step
    ends = train(model, lambda _: forward(next(step_inputs)).float().sum(), num_items=1, optimizer=optimizer,
                 steps=len(runs), batch_size=1, desc=desc)["seconds"]
    durations = torch.tensor(ends).diff(prepend=torch.zeros(1)).view(len(inputs), warmup + repeats)
    model.zero_grad(set_to_none=True)
    return durations[:, warmup:].median(dim=1).values.tolist()


class GlobalSelfAttention(nn.Module):
    """The quadratic baseline: project the input tokens to ``dim`` and run one pre-norm self-attention
    block over all of them (a ViT block on pixels). (B, M, input_dim) -> (B, M, dim)."""

    def __init__(self, input_dim, dim=64, num_heads=4):
        super().__init__()
        self.proj = nn.Linear(input_dim, dim)
        self.block = EncoderBlock(dim, num_heads, 4 * dim)

    def forward(self, inputs):
        return self.block(self.proj(inputs))


def measure_input_scaling(token_counts, models, input_dim, batch_size=1, repeats=3, device="cpu", seed=0):
    """Time (one training step) and activation memory of each model as the number of input tokens grows.

    models: {name: module taking (B, M, input_dim)}. -> list of rows {model, tokens, seconds, bytes}.
    """
    rows = []
    for name, model in models.items():
        model.to(device)
        inputs = [torch.randn(batch_size, tokens, input_dim, device=device,
                              generator=torch.Generator(device).manual_seed(seed)) for tokens in token_counts]
        seconds = time_training_steps(model, inputs, repeats, desc=f"timing {name}")
        rows += [{"model": name, "tokens": tokens, "seconds": step_seconds,
                  "bytes": saved_activation_bytes(model, x)}
                 for tokens, x, step_seconds in zip(token_counts, inputs, seconds)]
    return rows


# --- transformers' PerceiverModel at the same configuration ------------------------------------------

def hf_perceiver_config(model):
    """The transformers ``PerceiverConfig`` matching a ``PerceiverClassifier`` (or ``PerceiverEncoder``)
    whose encoder has transformers' layout (``cross_attend_every_block=False``, ``share_weights=True``)."""
    from transformers import PerceiverConfig

    encoder = model.encoder if hasattr(model, "encoder") else model
    if encoder.cross_attend_every_block or not encoder.share_weights:
        raise ValueError("transformers' PerceiverModel cross-attends once and shares the latent transformer: "
                         "build the encoder with cross_attend_every_block=False, share_weights=True")
    return PerceiverConfig(
        num_latents=encoder.num_latents, d_latents=encoder.latent_dim, d_model=encoder.input_dim,
        num_blocks=encoder.num_blocks, num_self_attends_per_block=encoder.self_attends_per_block,
        num_self_attention_heads=encoder.num_self_attention_heads,
        num_cross_attention_heads=encoder.num_cross_attention_heads,
        qk_channels=encoder.latent_dim, v_channels=encoder.latent_dim,
        cross_attention_widening_factor=encoder.cross_attention_widening_factor,
        self_attention_widening_factor=encoder.self_attention_widening_factor,
        hidden_act="gelu", attention_probs_dropout_prob=0.0, use_query_residual=True,
        image_size=getattr(getattr(model, "encode_pixels", None), "image_size", (224,))[0])


def perceiver_layer_pairs(hf_layer, query_norm, context_norm, attention, mlp_norm, mlp_fc1, mlp_fc2):
    """(ours, transformers') tensor pairs of one attention layer and its MLP against a ``PerceiverLayer``:
    q -> query, our fused key/value -> key and value, proj -> output.dense (``context_norm`` is None
    for self-attention, whose context is its own normalised input)."""
    hf_attention = hf_layer.attention
    pairs = linear_pairs(query_norm, hf_attention.self.layernorm1)
    if context_norm is not None:
        pairs += linear_pairs(context_norm, hf_attention.self.layernorm2)
    pairs += linear_pairs(attention.q, hf_attention.self.query)
    pairs += linear_pairs(attention.kv, [hf_attention.self.key, hf_attention.self.value])
    pairs += linear_pairs(attention.proj, hf_attention.output.dense)
    for ours, theirs in ((mlp_norm, hf_layer.layernorm), (mlp_fc1, hf_layer.mlp.dense1),
                         (mlp_fc2, hf_layer.mlp.dense2)):
        pairs += linear_pairs(ours, theirs)
    return pairs


def to_hf_perceiver(model):
    """A transformers ``PerceiverModel`` (pixels + Fourier features preprocessor, no decoder) holding the
    weights of a ``PerceiverClassifier``'s encoder: its ``last_hidden_state`` equals our latents."""
    from transformers import PerceiverModel
    from transformers.models.perceiver.modeling_perceiver import PerceiverImagePreprocessor

    config = hf_perceiver_config(model)
    pixels = model.encode_pixels
    preprocessor = PerceiverImagePreprocessor(
        config, prep_type="pixels", spatial_downsample=1, in_channels=pixels.in_channels,
        position_encoding_type="fourier", fourier_position_encoding_kwargs=dict(
            num_bands=pixels.num_bands, max_resolution=pixels.max_resolution, concat_pos=True,
            sine_only=False))
    hf = PerceiverModel(config, input_preprocessor=preprocessor).eval()
    encoder = model.encoder
    cross = encoder.cross_attends[0]
    pairs = [(encoder.latents, hf.embeddings.latents)]
    pairs += perceiver_layer_pairs(hf.encoder.cross_attention, cross.query_norm, cross.context_norm,
                                   cross.attn, cross.norm, cross.mlp[0], cross.mlp[2])
    for hf_layer, block in zip(hf.encoder.self_attends, encoder.latent_transformers[0], strict=True):
        pairs += perceiver_layer_pairs(hf_layer, block.norm1, None, block.attn, block.norm2, block.mlp.fc1,
                                       block.mlp.fc2)
    copy_weights(pairs, to="transformers", model_name="Perceiver")
    return hf


def hf_perceiver_latents(hf_model, images):
    """Latents (B, N, D) of a ``PerceiverModel`` made by ``to_hf_perceiver``, for images (B, C, H, W)."""
    return hf_model(inputs=images).last_hidden_state


def small_hf_perceiver_fourier(num_labels=10, num_latents=32, d_latents=64, num_blocks=1,
                               num_self_attends_per_block=2, **config_options):
    """A small, randomly initialised ``PerceiverForImageClassificationFourier`` and its image processor
    (the offline stand-in for deepmind/vision-perceiver-fourier: same classes, 224x224 pixels, 64 bands)."""
    from importlib import resources

    from transformers import PerceiverConfig, PerceiverForImageClassificationFourier, PerceiverImageProcessor

    if num_labels == 1000:  # name the classes as the checkpoint does
        text = resources.files("homl16.data").joinpath("imagenet_classes.txt").read_text()
        names = [line.split(",")[0] for line in text.splitlines()]
        config_options.setdefault("id2label", dict(enumerate(names)))
    config = PerceiverConfig(num_latents=num_latents, d_latents=d_latents, num_blocks=num_blocks,
                             num_self_attends_per_block=num_self_attends_per_block,
                             num_self_attention_heads=4, num_cross_attention_heads=1, num_labels=num_labels,
                             **config_options)
    return PerceiverForImageClassificationFourier(config).eval(), PerceiverImageProcessor()


def count_parameters(model):
    """Number of distinct parameters (shared weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def downsample(images, factor):
    """Average-pool images (B, C, H, W) by ``factor`` on each side (e.g. 28x28 digits -> 14x14)."""
    check_rank("images", images, 4, "(batch, channels, height, width)")
    return F.avg_pool2d(images, factor)


def offline_perceiver_checkpoint():
    """Directory of the offline stand-in for deepmind/vision-perceiver-fourier (``small_hf_perceiver_fourier``
    with ImageNet's 1,000 classes), saved once (see ``homl16.pretrained.STAND_INS``)."""
    from homl16.pretrained import local_checkpoint

    return local_checkpoint("small-perceiver-fourier", lambda: small_hf_perceiver_fourier(num_labels=1000))
