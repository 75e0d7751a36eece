"""Prompt construction and batching: the single definition of the prompt/target token boundary.

Training, teacher-forced evaluation and greedy generation all take ``prompt_ids`` from
:func:`encode_record`, so the boundary is the same everywhere by construction.

The prompt is the reference's (DESIGN §1): with the tokenizer's chat template, a system turn
"You are a helpful assistant." (when the template has one), the user turn with the query and
the generation prompt, rendered with ``enable_thinking=False`` (templates that take it, such as
Qwen3's, then close the thinking block, so the first answer position does not compete with
``<think>``); a leading BOS that the template writes is dropped and the tokenizer adds its own
special tokens, as the reference's tokenization does. The target is the answer followed by the
template's end-of-turn suffix (e.g. ``<|im_end|>\n``), which is trained and counted in the
reported losses, while lengths, EM, bits and the certificate count the answer's own tokens.
Without a template (or with ``--no-chat-template``) the prompt is the raw query and there is
no suffix.

Batches are **left-padded**: every sequence ends at the last column, so the target tokens
of all records are right-aligned and the logits that predict them are the last
``max_target_len + 1`` positions (minus the very last). Position ids count real tokens
only, so a padded row computes exactly what the unpadded one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .records import Record

IGNORE = -100
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class Encoded:
    prompt_ids: list[int]
    target_ids: list[int]  # the target, as everywhere in memlaw: the answer's own tokens, then `suffix_len` end-of-turn tokens
    suffix_len: int = 0

    @property
    def answer_len(self) -> int:
        """The answer's own tokens: what lengths, EM, bits and the certificate count."""
        return len(self.target_ids) - self.suffix_len

    @property
    def answer_ids(self) -> list[int]:
        return self.target_ids[: self.answer_len]


def uses_chat_template(tokenizer, chat_template: bool) -> bool:
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    # enable_thinking is a template variable: templates that do not use it ignore it
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=False
    )


def supports_system_turn(tokenizer) -> bool:
    """Whether the chat template renders a system message (some raise, some drop it silently)."""
    return _system_turn(tokenizer, tokenizer.chat_template)


@lru_cache(maxsize=16)
def _system_turn(tokenizer, template: str) -> bool:
    marker = "memlaw-system-probe"
    try:
        text = _render(tokenizer, [{"role": "system", "content": marker}, {"role": "user", "content": "q"}], True)
    except Exception:  # noqa: BLE001 - jinja raises its own errors ("System role not supported")
        return False
    return marker in text


def prompt_ids(tokenizer, query: str, chat_template: bool = True) -> list[int]:
    """Token ids of the prompt: [system turn] + user turn + generation prompt, or the raw query."""
    if not uses_chat_template(tokenizer, chat_template):
        return list(tokenizer(query)["input_ids"])  # the tokenizer's own BOS handling applies
    system = [{"role": "system", "content": SYSTEM_PROMPT}] if supports_system_turn(tokenizer) else []
    text = _render(tokenizer, system + [{"role": "user", "content": query}], True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        text = text[len(bos) :]  # the template's BOS; the tokenizer adds its own if it has the habit
    return list(tokenizer(text)["input_ids"])


def suffix_ids(tokenizer, chat_template: bool = True) -> list[int]:
    """The template's end-of-turn suffix (what follows a turn's content, e.g. <|im_end|>\n): the
    common tail of two renderings that differ only in the user's content; [] without a template."""
    if not uses_chat_template(tokenizer, chat_template):
        return []
    return list(_suffix(tokenizer, tokenizer.chat_template))


@lru_cache(maxsize=16)
def _suffix(tokenizer, template: str) -> tuple[int, ...]:
    a, b = (tokenizer(_render(tokenizer, [{"role": "user", "content": c}], False), add_special_tokens=False)["input_ids"]
            for c in ("1", "2"))
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return tuple(a[len(a) - n :])


def answer_ids(tokenizer, record: Record) -> list[int]:
    """The answer's own tokens (the target without its end-of-turn suffix)."""
    if record.answer_ids is not None:
        return list(record.answer_ids)
    return list(tokenizer(record.target, add_special_tokens=False)["input_ids"])


def encode_record(tokenizer, record: Record, chat_template: bool = True) -> Encoded:
    suffix = suffix_ids(tokenizer, chat_template)
    return Encoded(prompt_ids(tokenizer, record.query, chat_template), answer_ids(tokenizer, record) + suffix, len(suffix))


def encode_records(tokenizer, records: list[Record], chat_template: bool = True) -> list[Encoded]:
    return [encode_record(tokenizer, r, chat_template) for r in records]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded prompt+target
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    position_ids: torch.Tensor  # (B, T) 0.. over real tokens
    labels: torch.Tensor  # (B, L) right-aligned target ids, IGNORE where a row's target is shorter
    answer_mask: torch.Tensor  # (B, L) bool: the answer's own tokens (the target without its suffix)
    target_lens: list[int]

    @property
    def target_mask(self) -> torch.Tensor:  # (B, L) bool: every trained token, suffix included
        return self.labels != IGNORE

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.labels.to(device),
            self.answer_mask.to(device),
            self.target_lens,
        )


def join(batches: list[Batch], pad_id: int) -> Batch:
    """Batches stacked row-wise into one (ΣB, T_max) batch, each left-padded to the widest (a packed forward's
    input: memlaw.train.trainer.train_pack); labels left-padded with IGNORE to the longest target."""
    T = max(b.input_ids.shape[1] for b in batches)
    L = max(b.labels.shape[1] for b in batches)

    def wide(t: torch.Tensor, width: int, value) -> torch.Tensor:  # (B, w) -> (B, width), left-padded
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    return Batch(
        torch.cat([wide(b.input_ids, T, pad_id) for b in batches]),
        torch.cat([wide(b.attention_mask, T, 0) for b in batches]),
        torch.cat([wide(b.position_ids, T, 0) for b in batches]),
        torch.cat([wide(b.labels, L, IGNORE) for b in batches]),
        torch.cat([wide(b.answer_mask, L, False) for b in batches]),
        [n for b in batches for n in b.target_lens],
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
    L = max(lens)
    labels = torch.full((len(items), L), IGNORE, dtype=torch.long)
    answer = torch.zeros((len(items), L), dtype=torch.bool)
    for i, e in enumerate(items):
        labels[i, L - lens[i] :] = torch.tensor(e.target_ids, dtype=torch.long)
        answer[i, L - lens[i] : L - e.suffix_len] = True
    return Batch(ids, mask, positions, labels, answer, lens)
