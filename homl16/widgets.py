"""ipywidgets explorers that still show something useful where widgets are not rendered.

Each explorer returns an object that Jupyter displays as live widgets; the same display
also carries a static PNG (the explorer's default view), which frontends without a widget
manager (GitHub, nbviewer, a notebook reopened without its kernel) show instead.
"""

import base64
import io

import matplotlib.pyplot as plt
import torch

from homl16.plot import overlay_attention


def figure_png(figure):
    """The PNG bytes of a matplotlib figure, which is then closed (works under every backend)."""
    if not isinstance(figure, plt.Figure):
        raise TypeError(f"figure must be a matplotlib Figure, got {type(figure).__name__}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


class WithStaticFallback:
    """Displays as ``widget`` where widgets render, and as the PNG of ``figure`` elsewhere.

    The widget's view is written here, as ipywidgets 7 and 8 both write it, because only ipywidgets 8 has
    ``_repr_mimebundle_`` (7 displays itself with ``_ipython_display_``, which cannot carry a fallback).
    """

    def __init__(self, widget, figure):
        if not isinstance(getattr(widget, "model_id", None), str):
            raise TypeError(f"widget must be an ipywidgets widget, got {type(widget).__name__}")
        self.widget = widget
        self.png = base64.b64encode(figure_png(figure)).decode("ascii")

    def _repr_mimebundle_(self, include=None, exclude=None):
        text = repr(self.widget)
        return {"text/plain": text if len(text) <= 110 else text[:110] + "…",
                "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                             "model_id": self.widget.model_id},
                "image/png": self.png}


def check_maps(images, maps):
    try:
        maps = torch.as_tensor(maps)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"maps must be a tensor or array (images, layers, heads, h, w): {error}") from None
    if maps.dim() != 5 or len(maps) != len(images) or len(images) == 0:
        raise ValueError(f"maps must be (images, layers, heads, h, w) with one entry per image "
                         f"({len(images)} images), got shape {tuple(maps.shape)}")
    return maps.detach().float().cpu()


def draw_heads(image, layer_maps, title=""):
    """One row: the image, then each head's map (h, w) overlaid, then their mean. layer_maps (H, h, w)."""
    num_heads = len(layer_maps)
    fig, axes = plt.subplots(1, num_heads + 2, figsize=(min(1.4 * (num_heads + 2), 8), 1.6))
    overlay_attention(image, torch.zeros(layer_maps.shape[1:]), ax=axes[0], alpha=0, title=title)
    for head, ax in enumerate(axes[1:-1]):
        overlay_attention(image, layer_maps[head], ax=ax, title=f"head {head + 1}")
    overlay_attention(image, layer_maps.mean(0), ax=axes[-1], title="mean of heads")
    fig.tight_layout()
    return fig


def attention_explorer(images, maps, titles=None):
    """Pick an image, a layer and a head; see that head's attention map over the image.

    images: a list of N images (PIL, arrays or (C, H, W) tensors); maps: (N, layers, heads, h, w)
    attention over the patch grid (e.g. ``homl16.dino.class_token_attention`` of every layer).
    Without a widget frontend it shows every head of the last layer for the first image.
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    maps = check_maps(images, maps)
    titles = list(titles) if titles is not None else [f"image {i}" for i in range(len(images))]
    if len(titles) != len(images):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    num_layers, num_heads = maps.shape[1:3]
    image = widgets.Dropdown(options=[(t, i) for i, t in enumerate(titles)], value=0, description="image")
    layer = widgets.IntSlider(value=num_layers, min=1, max=num_layers, description="layer")
    head = widgets.Dropdown(options=[("all", 0)] + [(str(h), h) for h in range(1, num_heads + 1)],
                            value=0, description="head")

    def show(image, layer, head):
        layer_maps = maps[image, layer - 1]
        if head == 0:
            fig = draw_heads(images[image], layer_maps, titles[image])
        else:
            fig, axes = plt.subplots(1, 2, figsize=(3.2, 1.7))
            overlay_attention(images[image], torch.zeros(layer_maps.shape[1:]), ax=axes[0], alpha=0,
                              title=titles[image])
            overlay_attention(images[image], layer_maps[head - 1], ax=axes[1],
                              title=f"layer {layer}, head {head}")
        display(Image(figure_png(fig)))  # not plt.show(): it shows nothing under MPLBACKEND=Agg

    output = widgets.interactive_output(show, {"image": image, "layer": layer, "head": head})
    explorer = widgets.VBox([widgets.HBox([image, layer, head]), output])
    return WithStaticFallback(explorer, draw_heads(images[0], maps[0, -1], titles[0]))
