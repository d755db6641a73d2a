"""The contrastive pieces shared by CLIP and BLIP-2's image-text contrastive (ITC) loss."""

import torch
import torch.nn.functional as F

from homl16.checks import check_rank


def symmetric_infonce(logits):
    """Symmetric InfoNCE over logits (B, B) where pair i matches pair i: the mean of the cross-entropy
    over rows (image -> text) and over columns (text -> image)."""
    check_rank("logits", logits, 2, "(images, texts)")
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be square (pair i matches pair i), got {tuple(logits.shape)}")
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
def recall_at_k(similarity, k):
    """Share of queries whose match is among their top ``k``: similarity (N queries, N items),
    the match of query i being item i."""
    check_rank("similarity", similarity, 2, "(queries, items)")
    if similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be square (query i matches item i), got {tuple(similarity.shape)}")
    if not 1 <= k <= similarity.shape[1]:
        raise ValueError(f"k must be between 1 and {similarity.shape[1]}, got {k}")
    top = similarity.topk(k, dim=1).indices  # (N, k)
    return (top == torch.arange(len(similarity)).unsqueeze(1)).any(dim=1).float().mean().item()
