"""Frozen-prefix activation cache.

Every layer below the lowest adapted layer k is frozen and sees the same fixed sequences
in every step, so the hidden states entering layer k are constant. They are computed once
per record (batched, no gradients, in the model dtype) and each step runs only layers
k…N-1, the final norm and the LM head at the target positions.

Supported: the Llama, Qwen2/Qwen3 and Mistral families (rotary positions, causal and
sliding-window masks built exactly as their own forward builds them). Anything else, or a
cache that would exceed its memory bound, falls back to the full forward with a notice.
"""

from __future__ import annotations

import importlib.util
import sys

import torch
from torch import nn

from ..data.encoding import Batch, Encoded, collate

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
    kwargs = dict(config=config, inputs_embeds=hidden, attention_mask=attention_mask, past_key_values=None,
                  position_ids=position_ids)
    masks = {"full_attention": create_causal_mask(**kwargs) if "full_attention" in types else None}
    if "sliding_attention" in types:
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    rotary = inner.rotary_emb(hidden, position_ids)
    for layer, kind in zip(inner.layers[start:stop], types):
        out = layer(hidden, attention_mask=masks[kind], position_ids=position_ids, position_embeddings=rotary,
                    past_key_values=None, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class PrefixCache:
    """Hidden states at the input of layer `start` for a fixed list of records."""

    def __init__(self, model: nn.Module, start: int, hidden: list[torch.Tensor]):
        self.model = model
        self.start = start
        self.hidden = hidden  # per record: (T_i, d), T_i = prompt + target tokens

    @classmethod
    def size_bytes(cls, model: nn.Module, encoded: list[Encoded]) -> int:
        base = base_causal_lm(model)
        dtype = next(base.parameters()).dtype
        tokens = sum(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
        return tokens * int(base.config.hidden_size) * torch.empty((), dtype=dtype).element_size()

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: nn.Module, start: int, encoded: list[Encoded], pad_id: int, device: torch.device,
        batch_size: int, store: torch.device,
    ) -> "PrefixCache":
        base = base_causal_lm(model)
        hidden: list[torch.Tensor] = []
        for first in range(0, len(encoded), batch_size):
            items = encoded[first : first + batch_size]
            batch = collate(items, pad_id).to(device)
            h = base.model.embed_tokens(batch.input_ids)  # (B, T, d)
            h = run_layers(base, h, batch.attention_mask, batch.position_ids, 0, start)
            for row, e in enumerate(items):
                n = len(e.prompt_ids) + len(e.target_ids)
                hidden.append(h[row, h.shape[1] - n :].to(store).clone())  # (T_i, d): drop left padding
        return cls(model, start, hidden)

    def answer_logits(self, indices: list[int], batch: Batch) -> torch.Tensor:
        """Logits predicting each target token, (B, L, V), for records `indices` collated as `batch`."""
        base = base_causal_lm(self.model)
        B, T = batch.input_ids.shape
        d = self.hidden[0].shape[-1]
        device = batch.input_ids.device
        h = torch.zeros((B, T, d), dtype=self.hidden[0].dtype, device=device)  # left-padded like the batch
        for row, i in enumerate(indices):
            cached = self.hidden[i]
            h[row, T - cached.shape[0] :] = cached.to(device, non_blocking=True)
        h = run_layers(base, h, batch.attention_mask, batch.position_ids, self.start, len(base.model.layers))
        L = batch.labels.shape[1]
        h = base.model.norm(h[:, T - L - 1 : T - 1])  # (B, L, d): position j predicts label j
        return base.lm_head(h)  # (B, L, V)


def notice(message: str) -> None:
    print(f"memlaw: {message}", file=sys.stderr, flush=True)
