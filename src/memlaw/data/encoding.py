"""Prompt construction and batching: the single definition of the prompt/target token boundary.

Training, teacher-forced evaluation and greedy generation all take ``prompt_ids`` from
:func:`encode_record`, so the boundary is the same everywhere by construction.

Batches are **left-padded**: every sequence ends at the last column, so the target tokens
of all records are right-aligned and the logits that predict them are the last
``max_target_len + 1`` positions (minus the very last). Position ids count real tokens
only, so a padded row computes exactly what the unpadded one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .records import Record

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]
    target_ids: list[int]


def uses_chat_template(tokenizer, chat_template: bool) -> bool:
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, query: str, chat_template: bool = True) -> list[int]:
    """Token ids of the prompt: the chat-templated user turn + generation prompt, or the raw query."""
    if uses_chat_template(tokenizer, chat_template):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(query)["input_ids"])  # the tokenizer's own BOS handling applies


def target_ids(tokenizer, record: Record) -> list[int]:
    if record.target_ids is not None:
        return list(record.target_ids)
    return list(tokenizer(record.target, add_special_tokens=False)["input_ids"])


def encode_record(tokenizer, record: Record, chat_template: bool = True) -> Encoded:
    return Encoded(prompt_ids(tokenizer, record.query, chat_template), target_ids(tokenizer, record))


def encode_records(tokenizer, records: list[Record], chat_template: bool = True) -> list[Encoded]:
    return [encode_record(tokenizer, r, chat_template) for r in records]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded prompt+target
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    position_ids: torch.Tensor  # (B, T) 0.. over real tokens
    labels: torch.Tensor  # (B, L) right-aligned target ids, IGNORE where a row's target is shorter
    target_lens: list[int]

    @property
    def target_mask(self) -> torch.Tensor:  # (B, L) bool
        return self.labels != IGNORE

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.labels.to(device),
            self.target_lens,
        )


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad to (B, T); return ids, attention mask and position ids."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def collate(items: list[Encoded], pad_id: int) -> Batch:
    ids, mask, positions = left_pad([e.prompt_ids + e.target_ids for e in items], pad_id)
    lens = [len(e.target_ids) for e in items]
    labels = torch.full((len(items), max(lens)), IGNORE, dtype=torch.long)
    for i, e in enumerate(items):
        labels[i, labels.shape[1] - lens[i] :] = torch.tensor(e.target_ids, dtype=torch.long)
    return Batch(ids, mask, positions, labels, lens)
