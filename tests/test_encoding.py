"""The prompt/target boundary is the same in training and generation; padding changes nothing."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, make_tokenizer
from memlaw.data.encoding import Encoded, collate, encode_record, prompt_ids
from memlaw.data.records import Record
from memlaw.evaluate.recall import greedy_decode, teacher_forced
from memlaw.model import forward

QUERIES = ["Ann Lee:", "Bob Ray Jr.:", "Cy:", "Dorothea Vanderbilt-Smith:"]


@pytest.mark.parametrize("chat", [True, False])
def test_prompt_is_chat_template_or_raw(chat):
    tok = make_tokenizer(chat_template=True)
    ids = prompt_ids(tok, "Ann Lee:", chat_template=chat)
    text = tok.decode(ids)
    if chat:
        assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nAnn Lee:<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert text.endswith("Ann Lee:") and "<|im_start|>" not in text


def test_no_template_on_tokenizer_means_raw():
    tok = make_tokenizer(chat_template=False)
    assert prompt_ids(tok, "Ann Lee:", True) == prompt_ids(tok, "Ann Lee:", False)


@pytest.mark.parametrize("chat", [True, False])
def test_training_sequence_is_prompt_then_target(chat):
    tok = make_tokenizer()
    items = [encode_record(tok, Record(q, t), chat) for q, t in zip(QUERIES, ["12", "345678", "9", "0000"])]
    batch = collate(items, tok.pad_token_id)
    L = batch.labels.shape[1]
    for row, e in enumerate(items):
        real = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        assert real == e.prompt_ids + e.target_ids
        assert batch.labels[row, L - len(e.target_ids) :].tolist() == e.target_ids
        assert (batch.labels[row, : L - len(e.target_ids)] == -100).all()
        assert batch.position_ids[row, -len(real) :].tolist() == list(range(len(real)))


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_output_is_teacher_forced_argmax(chat, kind):
    """Take each record's target to be the model's own greedy continuation: teacher forcing on
    that target must then predict every token by argmax. This holds only if training/eval and
    generation share the same prompt/target boundary, positions and masks (mixed lengths)."""
    tok = make_tokenizer()
    model = make_model(kind, vocab_size=len(tok), seed=3)
    prompts = [Encoded(prompt_ids(tok, q, chat), [0] * n) for q, n in zip(QUERIES, [3, 7, 1, 5])]
    generated = greedy_decode(model, prompts, tok.pad_token_id, batch_size=4, device="cpu")
    assert [len(g) for g in generated] == [3, 7, 1, 5]
    items = [Encoded(p.prompt_ids, g) for p, g in zip(prompts, generated)]
    stats = teacher_forced(forward.AnswerForward(model, items, tok.pad_token_id, "cpu"), batch_size=4)
    for s in stats:
        assert s.correct.all()


def test_padding_does_not_change_token_losses():
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok), seed=5)
    items = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, ["12", "345678", "9", "0000"])]
    together = teacher_forced(forward.AnswerForward(model, items, tok.pad_token_id, "cpu"), batch_size=4)
    alone = [teacher_forced(forward.AnswerForward(model, [e], tok.pad_token_id, "cpu"), batch_size=1)[0] for e in items]
    for a, b in zip(together, alone):
        assert a.losses.shape == b.losses.shape
        assert abs(a.losses - b.losses).max() < 1e-5


def test_answer_only_logits_equal_full_logits():
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok), seed=2)
    items = [encode_record(tok, Record(q, t)) for q, t in zip(QUERIES, ["12", "345678", "9", "0000"])]
    batch = collate(items, tok.pad_token_id)
    kept = forward.answer_logits(model, batch)
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    L = batch.labels.shape[1]
    assert kept.shape == (4, L, len(tok))
    assert torch.allclose(kept, full[:, -L - 1 : -1], atol=1e-5)
