"""The one forward pass used by training, teacher-forced evaluation and the certificate check.

Only the logits that predict target tokens are computed (answer-only logits): with left
padding, these are the positions T-L-1 … T-2 for a batch whose longest target has L tokens.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..data.encoding import IGNORE, Batch


@lru_cache(maxsize=None)
def _accepts_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _base_class(model: torch.nn.Module) -> type:
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base)


def answer_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits predicting each target token: (B, L, V), right-aligned like ``batch.labels``."""
    L = batch.labels.shape[1]
    kwargs = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    if _accepts_logits_to_keep(_base_class(model)):
        logits = model(**kwargs, logits_to_keep=L + 1).logits  # (B, L+1, V)
    else:
        logits = model(**kwargs).logits[:, -(L + 1) :]  # (B, L+1, V)
    return logits[:, :-1]  # (B, L, V): position j predicts label j


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in float32: (B, L), 0 where labels == IGNORE."""
    B, L, V = logits.shape
    losses = F.cross_entropy(
        logits.float().reshape(B * L, V), labels.reshape(B * L), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(B, L)
