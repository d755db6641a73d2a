# %%
import matplotlib.pyplot as plt
import torch

import homl16
from homl16.data.digits import mnist_tensors

device = homl16.setup_notebook(seed=42)
X_train, y_train, X_test, y_test = mnist_tensors()

# %% [markdown]
# ## Model soups: one model made of several fine-tuned ones
#
# An ensemble averages the *predictions* of several models: usually more accurate than any one of them, but it
# runs every member at inference time. Wortsman et al.'s *model soups* (2022) average the *weights* instead.
# That only makes sense when the models share a starting point: copies of one pretrained network, fine-tuned
# with different hyperparameters, tend to stay in the same basin of the loss, so the points between them are
# good models too. The soup is a single network, so it costs exactly what one ingredient costs.
#
# Two recipes from the paper:
#
# - the **uniform soup** averages every ingredient;
# - the **greedy soup** sorts the ingredients by their accuracy on held-out validation data and adds each one
#   only if the soup's validation accuracy does not drop, so a bad ingredient (say, a learning rate that
#   left the basin) cannot spoil it.
#
# The pretrained starting point: the encoder pretrained at the top of this notebook. (Here it is a stand-in:
# the shared encoder trained for a few seconds, with labels, on the digits 0 to 4 only; the next line is the
# one to change.) Every copy gets the same new zero-initialised head for the ten digits, then is fine-tuned on
# 1,000 labelled digits. Half of the 1,000 test digits pick the greedy soup's ingredients (validation); the
# other half give the numbers reported.

# %%
from homl16.train import adamw_one_cycle, fit
from homl16.vit import ViT


def stand_in_encoder(epochs=6):
    """The shared encoder sizes, trained with labels on the digits 0-4 only; returned without its head."""
    homl16.set_seed(0)
    vit = ViT(img_size=28, patch_size=4, in_channels=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
              ff_dim=128, dropout=0.0)
    first_half = y_train < 5
    data = (X_train[first_half], y_train[first_half])
    fit(vit, data, epochs, *adamw_one_cycle(vit, 2e-3, len(data[0]), 128, epochs), device=device,
        desc="stand-in pretraining")
    vit.num_classes, vit.head = 0, torch.nn.Identity()
    return vit


pretrained = stand_in_encoder()  # <- the one line to swap for 08a's MAE encoder

# %%
from homl16 import soups
from homl16.augment import random_shift
from homl16.train import accuracy, predict

X_few, y_few = X_train[:1000], y_train[:1000]  # the labelled digits for fine-tuning
X_val, y_val, X_held, y_held = X_test[:500], y_test[:500], X_test[500:], y_test[500:]


def shift(X):
    return random_shift(X, max_shift=2)


recipes = [dict(lr=2e-3, seed=0), dict(lr=1e-3, seed=1), dict(lr=3e-3, seed=2),
           dict(lr=2e-3, seed=3, augment=shift), dict(lr=3e-3, seed=4, augment=shift)]
start = soups.with_head(pretrained, num_classes=10)
ingredients = [soups.fine_tune(start, (X_few, y_few), epochs=8, device=device, **recipe)[0]
               for recipe in recipes]


def score(model, X, y):
    return accuracy(predict(model, X, device=device), y)


val_scores = [score(m, X_val, y_val) for m in ingredients]
test_scores = [score(m, X_held, y_held) for m in ingredients]
print("ingredient  lr      augment  val acc  test acc")
for recipe, val, test in zip(recipes, val_scores, test_scores):
    print(f"seed {recipe['seed']}      {recipe['lr']:<7g} {'shift' if 'augment' in recipe else '-':8} "
          f"{val:.3f}    {test:.3f}")

# %% [markdown]
# Both soups, and the ensemble of the same five models for comparison. The soup is one ViT; the ensemble runs
# five, so its inference time is timed next to the soup's, in alternating rounds (the best of each is kept,
# the least disturbed by whatever else the machine is doing).

# %%
from homl16.cost import time_side_by_side

homl16.show_source(soups.greedy_soup)
uniform = soups.soup_of(ingredients)
greedy, kept, greedy_val = soups.greedy_soup(ingredients, X_val, y_val, device=device)
ensemble_acc = accuracy(soups.ensemble_probabilities(ingredients, X_held, device=device), y_held)
results = {"best single ingredient": max(test_scores), "uniform soup": score(uniform, X_held, y_held),
           "greedy soup": score(greedy, X_held, y_held), "ensemble of all": ensemble_acc}
print(f"greedy soup: ingredients {kept} (by seed, in the order added), validation accuracy {greedy_val:.3f}")
for name, acc in results.items():
    print(f"{name:24} test accuracy {acc:.3f}")

X_batch = X_held.to(device)
seconds = time_side_by_side(
    {"soup": lambda: predict(greedy, X_batch, device=device),
     "ensemble": lambda: soups.ensemble_probabilities(ingredients, X_batch, device=device)}, repeats=5)
print(f"inference on 500 digits: soup {1e3 * seconds['soup']:.1f} ms, "
      f"ensemble {1e3 * seconds['ensemble']:.1f} ms "
      f"({seconds['ensemble'] / seconds['soup']:.1f}x the soup's)")

# %% [markdown]
# Why does averaging weights work at all? Walk along the straight line from one fine-tuned model to another
# and measure the validation accuracy on the way: if the two sit in one basin, the accuracy does not collapse
# in the middle (for two networks trained from *different* random inits it would: their hidden units are not
# even in the same order).

# %%
import copy

best_two = sorted(range(len(ingredients)), key=lambda i: -val_scores[i])[:2]
a, b = (ingredients[i].state_dict() for i in best_two)
blend, alphas, path = copy.deepcopy(greedy), torch.linspace(0, 1, 11), []
for alpha in alphas:
    blend.load_state_dict({k: (1 - alpha) * a[k] + alpha * b[k] for k in a})
    path.append(score(blend, X_val, y_val))
plt.figure(figsize=(4, 2.6))
plt.plot(alphas, path, "o-")
plt.xlabel("weight on the second model")
plt.ylabel("validation accuracy")
plt.title("Between two fine-tuned copies")
plt.show()

# %% [markdown]
# How to read these numbers: a soup only helps when its ingredients stay close enough that their average is
# still a good model. A weak starting point, a large learning rate or few labelled examples let the copies
# move far apart, and then the uniform soup falls below its ingredients (and the accuracy sags in the middle
# of the line above). The greedy soup guards against that by construction: it adds an ingredient only if the
# validation accuracy holds, so at worst it is its best ingredient alone. The paper's gains come from large
# pretrained models (CLIP, ViT-G) fine-tuned with small learning rates, where the copies stay in one basin.

# %% [markdown]
# ## Token merging: fewer tokens in every layer, no retraining
#
# A ViT spends its time on its tokens: every block's attention and MLP runs over all of them. Many are nearly
# redundant (the blank background of a digit, say). Bolya et al.'s **token merging** (ToMe, 2023) shrinks the
# sequence at run time, in a model that was trained without it. In every block, between the attention and the
# MLP:
#
# 1. split the tokens alternately into two sets A and B;
# 2. match each A token with its most similar B token (cosine similarity of the attention *keys*, averaged
#    over heads: they already summarise what each token is about);
# 3. merge the r best-matched pairs (the class token is never merged) by a size-weighted average.
#
# Bipartite matching keeps it cheap (no clustering, no iterations), and each layer ends with r fewer tokens.
# A merged token stands for several patches, so ToMe tracks each token's *size* s and adds log s to the
# attention logits of its key (*proportional attention*): the token then weighs as much as the s tokens it
# replaced. The code below runs the trained soup's own modules, with no copy of its weights.
#
# Two cousins from the chapter: **token pruning** simply drops unimportant tokens, for instance those the
# class token attends to least (shown for comparison); **early exiting** stops computing the deeper layers for
# tokens (or inputs) that no longer need them.

# %%
from homl16 import tome

homl16.show_source(tome.bipartite_soft_matching, tome.reduced_block)

# %% [markdown]
# The sweep: with 50 tokens (49 patches and the class token) and 4 layers, each layer can merge at most half
# of its tokens, which allows up to r = 9 per layer (50, 41, 32, 23, then 14 tokens). Accuracy on the 500
# held-out digits and throughput for r = 0, 2, 4, 6, 8, 9, merged and pruned, all timed side by side with the
# plain model in alternating rounds. (Pruning computes the attention weights explicitly, to read the class
# token's row, so it runs without the fused attention kernel the others use.)

# %%
vit = greedy.eval()
largest_r = tome.max_r(50, len(vit.blocks))
r_values = sorted({*range(0, largest_r + 1, 2), largest_r})
curves = {}
with torch.no_grad():
    for mode in tome.MODES:
        curves[mode] = [accuracy(tome.tome_forward(vit, X_batch, r, mode).cpu(), y_held) for r in r_values]
    calls = {("plain", 0): lambda: vit(X_batch)}
    for mode in tome.MODES:
        for r in r_values:
            calls[(mode, r)] = lambda mode=mode, r=r: tome.tome_forward(vit, X_batch, r, mode)
    seconds = time_side_by_side(calls, repeats=5)
plain_rate = len(X_batch) / seconds[("plain", 0)]

fig, ax = plt.subplots(figsize=(5.5, 3.4))
for mode, label in (("merge", "ToMe (merge)"), ("prune", "pruning (class attention)")):
    rates = [len(X_batch) / seconds[(mode, r)] for r in r_values]
    ax.plot(rates, curves[mode], "o-", label=label)
    for r, rate, acc in zip(r_values, rates, curves[mode]):
        ax.annotate(str(r), (rate, acc), textcoords="offset points", xytext=(3, 3), fontsize=7)
ax.plot([plain_rate], [results["greedy soup"]], "k*", markersize=10, label="plain ViT")
ax.set_xlabel("throughput (images / s)")
ax.set_ylabel("test accuracy")
ax.set_title("Tokens removed per layer (r) vs speed and accuracy")
ax.legend()
plt.show()

# %% [markdown]
# The numbers at one fixed r = 8 (the largest even r; 50, 42, 34, 26, then 18 tokens), speed against the
# plain model's run in the same rounds.

# %%
tome_r = 8
speedup = seconds[("plain", 0)] / seconds[("merge", tome_r)]
merged_acc = curves["merge"][r_values.index(tome_r)]
drop = results["greedy soup"] - merged_acc
print(f"r = {tome_r}: ToMe {speedup:.2f}x the plain model's throughput, accuracy "
      f"{merged_acc:.3f} vs {results['greedy soup']:.3f}; pruning "
      f"{seconds[('plain', 0)] / seconds[('prune', tome_r)]:.2f}x, "
      f"accuracy {curves['prune'][r_values.index(tome_r)]:.3f}")
homl16.report({"soup_uniform_accuracy": results["uniform soup"],
               "soup_greedy_accuracy": results["greedy soup"],
               "best_single_accuracy": results["best single ingredient"], "tome_speedup": speedup,
               "tome_accuracy_drop": drop, "tome_r": tome_r})
