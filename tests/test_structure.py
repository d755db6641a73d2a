"""The package's shape, pinned: who may import whom, one training loop, one weight copy, no dead code."""

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "homl16"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# Shared building blocks: any module may import them.
CORE = {"checks", "runtime", "progress", "train", "weights", "transformer", "plot", "boxes", "pretrained",
        "efficientnet", "contrastive", "augment", "cnn", "bert", "notebook", "widgets", "data",
        "plan", "localhub", "probe"}
# A chapter module imports another chapter module only for that chapter's model.
ALLOWED = {
    ("deit", "vit"),  # DeiT is a ViT with a distillation token
    ("clip", "vit"),  # CLIP's image tower is a ViT
    ("swin", "vit"),  # Swin embeds patches as ViT does
    ("swinv2", "swin"),  # Swin v2 changes Swin's block; windows, masks, merging and backbone are v1's
    ("segment", "vit"),  # the plain-ViT segmentation baseline
    ("pvt", "segment"), ("swin", "segment"),  # their segmentation heads
    ("cost", "pvt"), ("cost", "swin"),  # the cost curves measure those attentions
    ("finetune", "vit"), ("finetune", "deit"),  # the fine-tuning script's stand-ins
    ("dalle", "clip"),  # DALL·E reranks its samples with CLIP
    ("search", "clip"),  # the photo search embeds with CLIP
    ("flamingo", "perceiver"),  # the Perceiver Resampler
    ("blip2", "qformer"),  # BLIP-2's stage 2 connects the Q-Former to a frozen LM
    ("ijepa", "dino"),  # the target encoder is an EMA teacher, as DINO's
}


def module_name(path):
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("homl16"):
            if node.module == "homl16":
                yield from (alias.name for alias in node.names)
            else:
                yield node.module.removeprefix("homl16.")
        elif isinstance(node, ast.Import):
            yield from (a.name.removeprefix("homl16.") for a in node.names if a.name.startswith("homl16."))


def top(name):
    return name.split(".")[0]


def test_chapter_modules_import_only_the_core_and_their_allowed_chapter_models():
    unexpected = []
    for path in SOURCES:
        source = module_name(path)
        if not source or top(source) in CORE:
            continue
        for target in imported_modules(path):
            if top(target) not in CORE and (top(source), top(target)) not in ALLOWED:
                unexpected.append(f"{source} -> {target}")
    assert not unexpected, f"new chapter-to-chapter imports (add to ALLOWED if intended): {unexpected}"


def test_the_core_imports_no_chapter_module():
    wrong = [f"{module_name(p)} -> {t}" for p in SOURCES if top(module_name(p) or "x") in CORE
             for t in imported_modules(p) if top(t) not in CORE]
    assert not wrong, wrong


@pytest.mark.parametrize("pattern", [r"\.backward\(", r"optimizer\.step\(", r"optimiser\.step\("])
def test_only_the_training_loop_steps_an_optimiser(pattern):
    offenders = [module_name(p) for p in SOURCES
                 if p.name != "train.py" and re.search(pattern, p.read_text())]
    assert not offenders, f"{pattern} outside homl16/train.py: {offenders}"


def test_weight_conversions_go_through_the_one_helper():
    offenders = []
    for path in SOURCES:
        if path.name == "weights.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.copy_\(|load_state_dict\(", line) and "# not a conversion" not in line:
                offenders.append(f"{module_name(path)}:{i}")
    assert not offenders, f"copy_/load_state_dict outside homl16/weights.py: {offenders}"


def public_names():
    for path in SOURCES:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield module_name(path), node.name


def test_every_public_function_is_used_outside_the_tests():
    texts = {p: p.read_text() for p in [*SOURCES, *ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("scripts/*.py"),
                                        *ROOT.glob("benchmarks/*.py")]}
    words = Counter(w for text in texts.values() for w in re.findall(r"\w+", text))
    unused = [f"{module}.{name}" for module, name in public_names() if words[name] <= 1]  # its definition
    assert not unused, f"public functions used by nothing but tests (delete or use them): {unused}"
