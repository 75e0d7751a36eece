"""Evaluation (DESIGN §4): greedy free-run recall, teacher-forced statistics, the certificate.

Certificate: if every target token of a record has p_t > 0.5 under teacher forcing, greedy
decoding reproduces it exactly (sufficient, not necessary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RECALL_P
from ..data.encoding import Encoded, left_pad
from ..data.information import BASE_LOSS, Information, format_floor_nats
from ..model.forward import AnswerForward
from ..model.hf_compat import cache_kwarg, forward_of, returned_cache


@dataclass
class TokenStats:
    """Teacher-forced statistics of one record's target tokens: the answer's own, then its suffix."""

    losses: np.ndarray  # (len,) float64 per-token cross-entropy, suffix included
    correct: np.ndarray  # (len,) bool: argmax == target
    suffix_len: int = 0  # trailing end-of-turn tokens (trained and in the reported loss, not in the certificate)

    @property
    def answer_losses(self) -> np.ndarray:
        return self.losses[: len(self.losses) - self.suffix_len]

    @property
    def answer_correct(self) -> np.ndarray:
        return self.correct[: len(self.correct) - self.suffix_len]

    @property
    def probs(self) -> np.ndarray:
        """p_t of the answer's own tokens."""
        return np.exp(-self.answer_losses)

    @property
    def stubborn(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.probs <= RECALL_P)]

    @property
    def certified(self) -> bool:
        return bool(np.all(self.probs > RECALL_P))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.no_grad()
def teacher_forced(forward: AnswerForward, batch_size: int) -> list[TokenStats]:
    """Per-record target-token losses and argmax correctness under teacher forcing (no dropout)."""
    forward.model.eval()
    out: list[TokenStats] = []
    for idx in _chunks(len(forward), batch_size):
        out += _token_stats(forward, idx, forward(list(idx)))
    return out


@torch.no_grad()
def teacher_forced_pack(forward: AnswerForward, adapters: list, batch_size: int) -> list[list[TokenStats]]:
    """:func:`teacher_forced` of each of a pack's adapters (memlaw.train.trainer.train_pack), in one forward per
    batch: every run's copy of the batch's records through its own units."""
    forward.model.eval()
    out: list[list[TokenStats]] = [[] for _ in adapters]
    for idx in _chunks(len(forward), batch_size):
        for stats, tokens in zip(out, forward.packed([list(idx)] * len(adapters), adapters)):
            stats += _token_stats(forward, idx, tokens)
    return out


def _token_stats(forward: AnswerForward, idx: range, tokens) -> list[TokenStats]:
    losses = tokens.losses.double().cpu().numpy()  # (B, L)
    correct = tokens.correct.cpu().numpy()
    L = tokens.batch.labels.shape[1]
    return [TokenStats(losses[i, L - n :], correct[i, L - n :], forward.encoded[row].suffix_len)
            for i, (row, n) in enumerate(zip(idx, tokens.batch.target_lens))]


@torch.no_grad()
def greedy_decode(model, encoded: list[Encoded], pad_id: int, batch_size: int, device) -> list[list[int]]:
    """Generate as many tokens as each answer has (its own, without the suffix) greedily from each prompt
    (KV cache, left-padded batches)."""
    lengths = [e.answer_len for e in encoded]
    return [ids for ids, _ in greedy_generate(model, [e.prompt_ids for e in encoded], lengths, pad_id, batch_size, device)]


@torch.no_grad()
def greedy_decode_pack(model, encoded: list[Encoded], pad_id: int, batch_size: int, device, adapters: list
                       ) -> list[list[list[int]]]:
    """:func:`greedy_decode` of each of a pack's adapters in one generation: each batch holds every run's copy of
    the same records, run by run, and the units split its rows evenly (memlaw.model.memory_unit.packed_units)."""
    from ..model.memory_unit import packed_units

    K, chunks = len(adapters), list(_chunks(len(encoded), batch_size))
    order = [i for idx in chunks for _ in range(K) for i in idx]  # batch c: K copies of chunk c
    with packed_units(adapters, [None] * K, [None] * K):
        generated = greedy_decode(model, [encoded[i] for i in order], pad_id, batch_size * K, device)
    out: list[list[list[int]]] = [[] for _ in adapters]
    position = 0
    for idx in chunks:
        for k in range(K):
            out[k] += generated[position : position + len(idx)]
            position += len(idx)
    return out


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new: list[int], pad_id: int, batch_size: int, device,
                    stop: int | None = None) -> list[tuple[list[int], list[float]]]:
    """Greedy continuation of each prompt, at most max_new[i] tokens, ending early after a `stop` token
    (not included); each with the probability the model gave every token it chose. KV cache,
    left-padded batches: one definition of greedy decoding for evaluation and for `memlaw ask`."""
    model.eval()
    results: list[tuple[list[int], list[float]]] = []
    for idx in _chunks(len(prompts), batch_size):
        n_new = max(max_new[i] for i in idx)
        ids, mask, positions = (t.to(device) for t in left_pad([prompts[i] for i in idx], pad_id))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        chosen, probs = [], []
        for step in range(n_new):
            logits = out.logits[:, -1].float()  # (B, V)
            token = logits.argmax(-1)  # (B,)
            chosen.append(token)
            probs.append(torch.softmax(logits, -1).gather(1, token[:, None])[:, 0])
            if step == n_new - 1 or (stop is not None and bool((torch.stack(chosen, 1) == stop).any(1).all())):
                break
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                        **cache_kwarg(forward_of(model), returned_cache(out)))
        tokens = torch.stack(chosen, dim=1).cpu().tolist()  # (B, steps)
        p = torch.stack(probs, dim=1).cpu().tolist()
        for row, i in enumerate(idx):
            end = max_new[i]
            if stop is not None and stop in tokens[row][:end]:
                end = tokens[row].index(stop)
            results.append((tokens[row][:end], p[row][:end]))
    return results


def first_failure(generated: list[int], target: list[int]) -> int | None:
    for i, (g, t) in enumerate(zip(generated, target)):
        if g != t:
            return i
    return None


def summarize(
    encoded: list[Encoded],
    final: list[TokenStats],
    initial: list[TokenStats],
    generated: list[list[int]],
    info: Information | None = None,
) -> tuple[dict, list[dict]]:
    """Aggregate metrics and per-record rows (without text fields).

    The reported losses (initial/final/delta_loss) average over every trained token, the
    template's suffix included, as the reference reports them; the *_answer_loss ones, the
    token counts, EM, accuracies, bits and the certificate count the answer's own tokens.
    `info`: each record's information (memlaw.data.information; default: the base model's
    loss on it, an upper bound). bits_memorized counts it for the records recalled exactly;
    loss_bits is the loss removed, in bits, which also counts what learning the format removed.
    """
    rows = []
    n_tokens = sum(e.answer_len for e in encoded)
    n_trained = sum(len(e.target_ids) for e in encoded)
    init_sum = sum(float(s.losses.sum()) for s in initial)
    final_sum = sum(float(s.losses.sum()) for s in final)
    init_answer = sum(float(s.answer_losses.sum()) for s in initial)
    final_answer = sum(float(s.answer_losses.sum()) for s in final)
    for e, s, g in zip(encoded, final, generated):
        fail = first_failure(g, e.answer_ids)
        rows.append(
            {
                "exact": fail is None,
                "first_failure": fail,
                "target_probs": [round(float(p), 6) for p in s.probs],
                "stubborn_positions": s.stubborn,
                "certified": s.certified,
                "generated_ids": g,
            }
        )
    free_run_correct = sum(sum(a == b for a, b in zip(g, e.answer_ids)) for e, g in zip(encoded, generated))
    metrics = {
        "n_records": len(encoded),
        "target_tokens": n_tokens,
        "exact_match": sum(r["exact"] for r in rows) / len(rows),
        "token_accuracy": sum(int(s.answer_correct.sum()) for s in final) / n_tokens,
        "free_run_token_accuracy": free_run_correct / n_tokens,
        "initial_loss": init_sum / n_trained,
        "final_loss": final_sum / n_trained,
        "delta_loss": (init_sum - final_sum) / n_trained,
        "initial_answer_loss": init_answer / n_tokens,
        "final_answer_loss": final_answer / n_tokens,
        "delta_answer_loss": (init_answer - final_answer) / n_tokens,
        "stubborn_tokens": sum(len(s.stubborn) for s in final),
        "certified_fraction": sum(r["certified"] for r in rows) / len(rows),
        # A certified record that is not an exact match would contradict the certificate.
        "certificate_violations": sum(r["certified"] and not r["exact"] for r in rows),
        "loss_bits": (init_answer - final_answer) / math.log(2),
    }
    if info is None:  # records unknown: each record's information is the base model's loss on it
        info = Information(tuple(float(s.answer_losses.sum()) / math.log(2) for s in initial), BASE_LOSS)
    floor = format_floor_nats(info) / n_trained  # a format-only model's loss per trained token (suffix: 0)
    metrics.update(
        information_bits=info.total,
        bits_memorized=info.of([r["exact"] for r in rows]),
        information_source=info.source,
        format_floor_loss=floor,
        memorized_delta_loss=floor - metrics["final_loss"],
    )
    return metrics, rows
