"""The one forward pass used by training, teacher-forced evaluation and the certificate check.

Only the logits that predict target tokens are computed (answer-only logits): with left
padding, these are the positions T-L-1 … T-2 for a batch whose longest target has L tokens.
:class:`AnswerForward` serves them for a fixed list of records, through the frozen-prefix
cache when one was built (see :mod:`.prefix_cache`), else through the full model.

Behind the cache, the LM head and the cross-entropy are one autograd function whose backward
touches only the target positions that carry gradient: MemFT gives every recalled token
weight 0, and late in training that is most of them, so most rows of the (tokens × vocab)
softmax gradient and its product with the head's weight are skipped.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..data.encoding import IGNORE, Batch, Encoded, collate, join
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


@dataclass
class AnswerTokens:
    """What a forward over records yields at their target positions (right-aligned like batch.labels)."""

    losses: torch.Tensor  # (B, L) float32 cross-entropy, 0 at padding; differentiable
    correct: torch.Tensor  # (B, L) bool: the teacher-forced argmax is the target
    batch: Batch


class _HeadCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``hidden @ weight.T`` against ``labels``; the frozen head's weight gets
    no gradient and rows whose loss has zero gradient are skipped in the backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
        # hidden (N, d), weight (V, d), labels (N,) with IGNORE at padding
        logits = hidden @ weight.T  # (N, V), model dtype
        logits32 = logits.float()
        lse = torch.logsumexp(logits32, dim=-1)  # (N,)
        valid = labels != IGNORE
        target = labels.clamp(min=0)
        losses = torch.where(valid, lse - logits32.gather(1, target[:, None])[:, 0], 0.0)  # (N,)
        correct = (logits32.argmax(-1) == labels) & valid  # (N,)
        ctx.save_for_backward(logits, lse, target, valid, weight)
        ctx.mark_non_differentiable(correct)
        return losses, correct

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor, _grad_correct):
        logits, lse, target, valid, weight = ctx.saved_tensors
        rows = torch.nonzero((grad_losses != 0) & valid)[:, 0]  # (R,)
        grad_hidden = torch.zeros((logits.shape[0], weight.shape[1]), dtype=weight.dtype, device=weight.device)
        if len(rows):
            probs = torch.exp(logits[rows].float() - lse[rows, None])  # (R, V) softmax
            probs[torch.arange(len(rows), device=rows.device), target[rows]] -= 1.0  # d loss / d logits
            probs *= grad_losses[rows, None]
            grad_hidden[rows] = probs.to(weight.dtype) @ weight  # (R, d)
        return grad_hidden, None, None


def head_cross_entropy(lm_head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (B, L) float32, correct (B, L) bool) of the LM head on final hidden states (B, L, d)."""
    B, L, d = hidden.shape
    weight = getattr(lm_head, "weight", None)
    if isinstance(lm_head, torch.nn.Linear) and lm_head.bias is None and not weight.requires_grad:
        losses, correct = _HeadCrossEntropy.apply(hidden.reshape(B * L, d), weight, labels.reshape(B * L))
        return losses.view(B, L), correct.view(B, L)
    return logits_cross_entropy(lm_head(hidden), labels)  # a head we must not treat as frozen and bias-free


def logits_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (B, L) float32, correct (B, L) bool) from answer-only logits (B, L, V)."""
    return token_losses(logits, labels), logits.argmax(-1) == labels


class AnswerForward:
    """Answer-only losses and argmax for records of a fixed list, by index."""

    def __init__(self, model: torch.nn.Module, encoded: list[Encoded], pad_id: int, device,
                 cache: PrefixCache | None = None):
        self.model = model
        self.encoded = encoded
        self.pad_id = pad_id
        self.device = torch.device(device)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.encoded)

    def __call__(self, indices: list[int]) -> AnswerTokens:
        """Losses and argmax correctness at the target positions of records `indices`."""
        batch = collate([self.encoded[i] for i in indices], self.pad_id).to(self.device)
        if self.cache is None:
            losses, correct = logits_cross_entropy(answer_logits(self.model, batch), batch.labels)
        else:
            hidden = self.cache.answer_hidden(indices, batch)  # (B, L, d), after the final norm
            losses, correct = head_cross_entropy(self.cache.lm_head, hidden, batch.labels)
        return AnswerTokens(losses, correct, batch)

    def packed(self, groups: list[list[int]], adapters: list) -> list[AnswerTokens]:
        """:meth:`__call__` for several runs in one forward (a pack: memlaw.train.trainer.train_pack): run k's
        records `groups[k]` through `adapters[k]`'s units, whose layers they share; one AnswerTokens per run.
        Each run's rows are left-padded to the widest run's; padding adds masked keys only."""
        from .memory_unit import packed_units

        batches = [collate([self.encoded[i] for i in g], self.pad_id).to(self.device) for g in groups]
        joint = join(batches, self.pad_id)

        def route(rows: list[int], widths: list[int]):
            return packed_units(adapters, rows, widths)

        if self.cache is not None:
            hidden = self.cache.packed_answer_hidden(groups, batches, joint, route)  # per run (B_k, L_k, d)
            return [AnswerTokens(*head_cross_entropy(self.cache.lm_head, h, b.labels), b) for h, b in zip(hidden, batches)]
        with route([b.input_ids.shape[0] for b in batches], [b.input_ids.shape[1] for b in batches]):
            logits = answer_logits(self.model, joint)  # (R, L_max, V)
        out, first, L_max = [], 0, joint.labels.shape[1]
        for b in batches:
            B, L = b.labels.shape
            out.append(AnswerTokens(*logits_cross_entropy(logits[first : first + B, L_max - L :], b.labels), b))
            first += B
        return out


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in float32: (B, L), 0 where labels == IGNORE."""
    B, L, V = logits.shape
    losses = F.cross_entropy(
        logits.float().reshape(B * L, V), labels.reshape(B * L), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(B, L)
