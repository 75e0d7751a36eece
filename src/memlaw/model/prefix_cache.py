"""Frozen-prefix activation cache.

Every layer below the lowest adapted layer k is frozen and sees the same fixed sequences
in every step, so the hidden states entering layer k are constant. They are computed once
per record (batched, no gradients, in the model dtype) and each step runs only layers
k…N-1 and the final norm at the target positions (the LM head follows in :mod:`.forward`).

Shared prompt prefix: records usually share their first prompt tokens (the chat template's
system turn: 24 of SmolLM2's ~44 tokens per PhoneBook record). Above layer k these
positions still depend on the adapter, but not on the record, so when the forward is
deterministic (no active dropout) each step runs the shared prefix once, as one extra row
of the batch, and every record's own tokens attend to that row's keys and values (expanded,
not copied, so the gradient from all records flows back into the one prefix computation).
Packing the prefix into the batch keeps it to one pass through the layers: on a GPU, where a
small model's step is bound by kernel launches, a separate pass for the prefix cost more
than its saved FLOPs. With active dropout every record runs its own copy of the prefix, so
each gets its own dropout mask as in the full forward.

Supported: the Llama, Qwen2/Qwen3 and Mistral families (rotary positions, causal and
sliding-window masks built exactly as their own forward builds them). Anything else, or a
cache that would exceed its memory bound, falls back to the full forward with a notice.
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import nullcontext

import torch
from torch import nn

from ..data.encoding import Batch, Encoded, collate
from .hf_compat import cache_kwarg

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The *ForCausalLM under a PeftModel (LoRA modules stay injected in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the cache cannot run this model, or None if it can."""
    base = base_causal_lm(model)
    model_type = getattr(base.config, "model_type", "")
    if model_type not in SUPPORTED_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    inner = getattr(base, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) or not hasattr(base, "lm_head"):
        return f"{type(base).__name__} does not have the expected embed_tokens/layers/norm/rotary_emb/lm_head"
    if importlib.util.find_spec("transformers.masking_utils") is None:
        return "this transformers version has no masking_utils (needs >= 4.53)"
    return None


def _layer_types(config, n_layers: int) -> list[str]:
    """Per-layer attention type, as the model's own forward picks its mask."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    sliding = getattr(config, "model_type", "") == "mistral" and getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * n_layers


def run_layers(
    base: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """Decoder layers start…stop-1 on hidden (B, T, d) -> (B, T, d), masks and rotary as in the model's forward."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    inner, config = base.model, base.config
    types = _layer_types(config, len(inner.layers))[start:stop]
    kwargs = dict(config=config, inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids,
                  **cache_kwarg(create_causal_mask, None))
    masks = {"full_attention": create_causal_mask(**kwargs) if "full_attention" in types else None}
    if "sliding_attention" in types:
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return _through_layers(base, start, stop, hidden, masks, position_ids)


def _through_layers(
    base: nn.Module, start: int, stop: int, hidden: torch.Tensor, masks: dict, position_ids: torch.Tensor, kv=None
) -> torch.Tensor:
    """Decoder layers start…stop-1 on hidden (B, T, d), each with the mask of its attention type."""
    inner = base.model
    types = _layer_types(base.config, len(inner.layers))[start:stop]
    rotary = inner.rotary_emb(hidden, position_ids)
    for layer, kind in zip(inner.layers[start:stop], types):
        out = layer(hidden, attention_mask=masks[kind], position_ids=position_ids, position_embeddings=rotary,
                    use_cache=False, **cache_kwarg(type(layer).forward, kv))
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


SHARED_PREFIX_ATTENTION = ("sdpa", "eager")  # implementations that take an explicit (B, 1, Q, K) mask


def shared_prefix_length(encoded: list[Encoded]) -> int:
    """Prompt tokens every record starts with, leaving each record at least its last prompt token."""
    if len(encoded) < 2:
        return 0
    first = encoded[0].prompt_ids
    limit = min(len(e.prompt_ids) for e in encoded) - 1  # the last prompt position predicts the first target
    n = 0
    while n < limit and all(e.prompt_ids[n] == first[n] for e in encoded):
        n += 1
    return n


def explicit_mask(
    config, q_pos: torch.Tensor, q_valid: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor,
    window: int | None, dtype: torch.dtype,
) -> torch.Tensor:
    """Attention mask (B, 1, Q, K) from token positions: key j is visible to query i when it is a
    real token at or before i (and, with a sliding window, fewer than `window` positions back).
    Padding queries see every key, so their (unused) outputs stay finite."""
    q, k = q_pos[:, :, None], k_pos[:, None, :]  # (B, Q, 1), (B, 1, K)
    allowed = k_valid[:, None, :] & (k <= q)  # (B, Q, K)
    if window is not None:
        allowed &= q - k < window
    allowed = (allowed | ~q_valid[:, :, None])[:, None]  # (B, 1, Q, K)
    if config._attn_implementation == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)  # eager: additive


class _PrefixKV:
    """Stands in for a transformers Cache in the attention modules: a prefix row holds the shared prefix
    (its last P columns); every row's keys/values get its prefix row's P keys/values put in front:
    (R, h, W, hd) -> (R, h, P + W, hd). One prefix row (row 0) is expanded to the batch; a packed batch
    has one per run, and `owner` (R,) names each row's."""

    def __init__(self, prefix_len: int, owner: torch.Tensor | None = None):
        self.P, self.owner = prefix_len, owner

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        n, W = key.shape[0], key.shape[2]
        if self.owner is None:
            pk, pv = key[:1, :, W - self.P :].expand(n, -1, -1, -1), value[:1, :, W - self.P :].expand(n, -1, -1, -1)
        else:
            pk, pv = key[self.owner, :, W - self.P :], value[self.owner, :, W - self.P :]  # (R, h, P, hd)
        return torch.cat([pk, key], 2), torch.cat([pv, value], 2)


def _stochastic(modules: nn.Module) -> bool:
    """Whether any dropout in `modules` is active (then each record must run its own prefix)."""
    return any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in modules.modules())


class PrefixCache:
    """Hidden states at the input of layer `start` for a fixed list of records.

    ``shared`` (P, d) holds the prompt prefix all records share (P may be 0); ``hidden[i]``
    (T_i - P, d) the rest of record i.
    """

    def __init__(self, model: nn.Module, start: int, shared: torch.Tensor, hidden: list[torch.Tensor]):
        self.model = model
        self.start = start
        self.shared = shared  # (P, d)
        self.hidden = hidden  # per record: (T_i - P, d), T_i = prompt + target tokens

    @classmethod
    def size_bytes(cls, model: nn.Module, encoded: list[Encoded]) -> int:
        base = base_causal_lm(model)
        dtype = next(base.parameters()).dtype
        P = cls._prefix_len(base, encoded)
        tokens = P + sum(len(e.prompt_ids) + len(e.target_ids) - P for e in encoded)
        return tokens * int(base.config.hidden_size) * torch.empty((), dtype=dtype).element_size()

    @staticmethod
    def _prefix_len(base: nn.Module, encoded: list[Encoded]) -> int:
        shareable = base.config._attn_implementation in SHARED_PREFIX_ATTENTION
        return shared_prefix_length(encoded) if shareable else 0

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: nn.Module, start: int, encoded: list[Encoded], pad_id: int, device: torch.device,
        batch_size: int, store: torch.device,
    ) -> "PrefixCache":
        base = base_causal_lm(model)
        P = cls._prefix_len(base, encoded)
        hidden: list[torch.Tensor] = []
        shared = None
        for first in range(0, len(encoded), batch_size):
            items = encoded[first : first + batch_size]
            batch = collate(items, pad_id).to(device)
            h = base.model.embed_tokens(batch.input_ids)  # (B, T, d)
            h = run_layers(base, h, batch.attention_mask, batch.position_ids, 0, start)
            for row, e in enumerate(items):
                n = len(e.prompt_ids) + len(e.target_ids)
                own = h[row, h.shape[1] - n :]  # (T_i, d): drop left padding
                if shared is None:
                    shared = own[:P].to(store).clone()  # (P, d)
                hidden.append(own[P:].to(store).clone())  # (T_i - P, d)
        return cls(model, start, shared, hidden)

    @property
    def prefix_len(self) -> int:
        return self.shared.shape[0]

    @property
    def lm_head(self) -> nn.Module:
        return base_causal_lm(self.model).lm_head

    def answer_hidden(self, indices: list[int], batch: Batch) -> torch.Tensor:
        """Final-norm hidden states that predict each target token, (B, L, d), for records `indices`
        collated as `batch`; ``lm_head`` turns them into logits."""
        return self.packed_answer_hidden([indices], [batch], batch)[0]

    def packed_answer_hidden(self, groups: list[list[int]], batches: list[Batch], joint: Batch, route=None
                             ) -> list[torch.Tensor]:
        """:meth:`answer_hidden` of several runs in one pass (a pack: memlaw.train.trainer.train_pack): run k's
        records `groups[k]` collated as `batches[k]`, all of them as `joint` (memlaw.data.encoding.join).
        `route(rows, widths)`: the context that sends each run's rows through its own units
        (memlaw.model.memory_unit.packed_units); None for one run."""
        base = base_causal_lm(self.model)
        layers = base.model.layers[self.start :]
        shared = self.prefix_len and not _stochastic(layers)
        if shared:  # each run: its prefix row, then its records, W columns wide
            h = self._shared_prefix_layers(groups, joint, route)
            firsts = _starts([len(g) + 1 for g in groups], skip=1)
        else:  # every record with its own copy of the prefix, as wide as the joint batch
            rows = [b.input_ids.shape[0] for b in batches]
            with _routed(route, rows, [b.input_ids.shape[1] for b in batches]):
                h = self._full_layers([i for g in groups for i in g], joint)
            firsts = _starts(rows)
        S = h.shape[1]
        out = []
        for first, b in zip(firsts, batches):
            B, L = b.labels.shape
            out.append(base.model.norm(h[first : first + B, S - L - 1 : S - 1]))  # (B, L, d): position j predicts label j
        return out

    def _rows(self, groups: list[list[int]], device: torch.device, width: int, prefix_row: bool) -> torch.Tensor:
        """Cached states left-padded to (R, width, d) on `device`: each record's prefix and own tokens
        (R = Σ B_k), or (prefix_row) per group the shared prefix as a row followed by each record's own
        tokens (R = Σ (B_k + 1))."""
        shared = self.shared.to(device, non_blocking=True)  # (P, d)
        n_rows = sum(len(g) + prefix_row for g in groups)
        h = torch.zeros((n_rows, width, shared.shape[-1]), dtype=shared.dtype, device=device)
        row = 0
        for indices in groups:
            if prefix_row:
                h[row, width - shared.shape[0] :] = shared
                row += 1
            for i in indices:
                own = self.hidden[i].to(device, non_blocking=True)
                n = own.shape[0]
                h[row, width - n :] = own
                if not prefix_row:
                    h[row, width - n - shared.shape[0] : width - n] = shared
                row += 1
        return h

    def _full_layers(self, indices: list[int], batch: Batch) -> torch.Tensor:
        """Every record runs its own copy of the prefix: (B, T, d), masks from the model's own builders."""
        base = base_causal_lm(self.model)
        h = self._rows([indices], batch.input_ids.device, batch.input_ids.shape[1], prefix_row=False)
        return run_layers(base, h, batch.attention_mask, batch.position_ids, self.start, len(base.model.layers))

    def _shared_prefix_layers(self, groups: list[list[int]], batch: Batch, route=None) -> torch.Tensor:
        """Per group the shared prefix as a row, its records' own tokens attending to that row's keys and
        values: one pass through the layers; returns every row (R, W, d), right-aligned, prefix rows included.
        `batch`: the records collated (its width T counts the prefix)."""
        base = base_causal_lm(self.model)
        inner, config = base.model, base.config
        P, T, device = self.prefix_len, batch.input_ids.shape[1], batch.input_ids.device
        W = max(P, T - P)  # row width: the prefix, or the longest record's own tokens
        spans, heads, owner = [], [], []  # per row: (first position, tokens); the prefix rows; each row's prefix row
        for indices in groups:
            heads.append(len(spans))
            owner += [len(spans)] * (len(indices) + 1)
            spans += [(0, P)] + [(P, self.hidden[i].shape[0]) for i in indices]
        R = len(spans)
        first, length = torch.tensor(spans, device=device).unbind(1)  # (R,) each
        pad = (W - length)[:, None]  # (R, 1) left padding per row
        cols = torch.arange(W, device=device)[None, :]  # (1, W)
        q_valid = cols >= pad  # (R, W)
        q_pos = first[:, None] + (cols - pad).clamp(min=0)  # (R, W): 0 … P-1 / P … T_i - 1 where valid
        p_pos = torch.arange(P, device=device)[None, :].expand(R, -1)  # (R, P)
        own_keys = q_valid.clone()
        own_keys[heads] = False  # a prefix row reads its keys once, from the prepended copy (twice would be the same softmax)
        k_pos = torch.cat([p_pos, q_pos], 1)  # (R, P + W)
        k_valid = torch.cat([torch.ones_like(p_pos, dtype=torch.bool), own_keys], 1)  # (R, P + W)

        stop = len(inner.layers)
        types = _layer_types(config, stop)[self.start : stop]
        window = {"full_attention": None, "sliding_attention": getattr(config, "sliding_window", None)}
        dtype = self.shared.dtype
        masks = {t: explicit_mask(config, q_pos, q_valid, k_pos, k_valid, window[t], dtype) for t in set(types)}
        h = self._rows(groups, device, W, prefix_row=True)  # (R, W, d)
        kv = _PrefixKV(P, None if len(groups) == 1 else torch.tensor(owner, device=device))
        with _routed(route, [len(g) + 1 for g in groups], [W] * len(groups)):
            return _through_layers(base, self.start, stop, h, masks, q_pos, kv)


def _starts(rows: list[int], skip: int = 0) -> list[int]:
    """The first row of each run's records in a packed batch of runs of `rows` rows (`skip`: its prefix row)."""
    starts, first = [], 0
    for n in rows:
        starts.append(first + skip)
        first += n
    return starts


def _routed(route, rows: list[int], widths: list[int]):
    return nullcontext() if route is None else route(rows, widths)


def notice(message: str) -> None:
    print(f"memlaw: {message}", file=sys.stderr, flush=True)
