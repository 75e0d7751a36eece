"""The one forward pass used by training, teacher-forced evaluation and the certificate check.

Only the logits that predict target tokens are computed (answer-only logits): with left
padding, these are the positions T-L-1 … T-2 for a batch whose longest target has L tokens.
:class:`AnswerForward` serves them for a fixed list of records, through the frozen-prefix
cache when one was built (see :mod:`.prefix_cache`), else through the full model.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..data.encoding import IGNORE, Batch, Encoded, collate
from .prefix_cache import PrefixCache


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


class AnswerForward:
    """Answer-only logits for records of a fixed list, by index."""

    def __init__(self, model: torch.nn.Module, encoded: list[Encoded], pad_id: int, device,
                 cache: PrefixCache | None = None):
        self.model = model
        self.encoded = encoded
        self.pad_id = pad_id
        self.device = torch.device(device)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.encoded)

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, Batch]:
        """(logits (B, L, V), batch) for records `indices`; logits right-aligned like batch.labels."""
        batch = collate([self.encoded[i] for i in indices], self.pad_id).to(self.device)
        if self.cache is None:
            return answer_logits(self.model, batch), batch
        return self.cache.answer_logits(indices, batch), batch


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in float32: (B, L), 0 where labels == IGNORE."""
    B, L, V = logits.shape
    losses = F.cross_entropy(
        logits.float().reshape(B * L, V), labels.reshape(B * L), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(B, L)
