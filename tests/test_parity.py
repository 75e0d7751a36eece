"""Reference parity (issue 12, DESIGN §1-§3): each expected value is worked out by hand from DESIGN."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tokenizer
from memlaw.config import TrainConfig
from memlaw.data.encoding import SYSTEM_PROMPT, Encoded, collate, encode_record, prompt_ids, suffix_ids
from memlaw.data.records import Record
from memlaw.model.forward import AnswerTokens
from memlaw.model.memory_unit import LowRankUnit
from memlaw.train.method import method_for
from memlaw.train.objectives import weighted_loss

QWEN3_STYLE = (  # the parts of Qwen3's chat template that matter here: system turn, thinking switch
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
NO_SYSTEM = (  # a Gemma-style template that refuses a system turn
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
BOS_FIRST = (  # a Llama-3-style template that writes the BOS itself
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------- 1: A's initial scale
@pytest.mark.parametrize("rank", [1, 8])
def test_a_is_uniform_within_one_over_sqrt_rank(rank):
    """kaiming_uniform_(a=√5) on the d×r tensor: fan_in = r, gain √(2/6), bound = gain·√(3/r) = 1/√r."""
    d, bound = 576, 1 / math.sqrt(rank)
    extremes = []
    for seed in range(20):
        torch.manual_seed(seed)
        a = LowRankUnit(d, rank).A.detach()
        assert a.shape == (d, rank) and a.abs().max() <= bound
        extremes.append(float(a.abs().max()))
        assert float(a.mean()) == pytest.approx(0.0, abs=4 * bound / math.sqrt(3 * d * rank))  # centred
    assert min(extremes) > 0.97 * bound  # d·r draws reach the bound: it is the scale, not just a cap


def test_linear_init_is_the_old_scale():
    torch.manual_seed(0)
    a = LowRankUnit(576, 8, a_init="linear").A.detach()
    assert 0.97 / math.sqrt(576) < a.abs().max() <= 1 / math.sqrt(576)  # 24x smaller than 1/√1, 8.5x than 1/√8


# ---------------------------------------------------------------------- 2: memft_ot without hard tokens
def tokens_of(losses: torch.Tensor) -> AnswerTokens:
    enc = [Encoded([1, 2], [5] * losses.shape[1]) for _ in range(losses.shape[0])]
    batch = collate(enc, 0)
    return AnswerTokens(losses, torch.ones_like(losses, dtype=torch.bool), batch)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(data="-", **kw).validate()


def test_memft_ot_with_no_hard_token_is_the_plain_mean_and_trains():
    losses = torch.tensor([[0.1, 0.2, 0.3], [0.05, 0.4, 0.6]], requires_grad=True)  # all below ln 2
    weights, _ = method_for(cfg(method="memft_ot"), 2).weights(tokens_of(losses), [0, 1])
    loss = weighted_loss(losses, weights)
    assert float(loss.detach()) == pytest.approx(float(losses.detach().mean()), rel=1e-6)
    loss.backward()
    assert torch.allclose(losses.grad, torch.full_like(losses, 1 / 6), rtol=1e-6)  # every token gets gradient


def test_memft_ot_zero_bp_variant_and_hard_tokens_unchanged():
    losses = torch.tensor([[0.1, 0.2, 0.3]])
    assert float(method_for(cfg(method="memft_ot", zero_bp=True), 1).weights(tokens_of(losses), [0])[0].sum()) == 0
    assert method_for(cfg(method="memft_ot", zero_bp=True), 1).zero_bp and not method_for(cfg(method="memft_ot"), 1).zero_bp
    hard = torch.tensor([[0.1, 2.0, 0.3]])
    assert method_for(cfg(method="memft_ot"), 1).weights(tokens_of(hard), [0])[0].tolist() == [[0.0, 1.0, 0.0]]


# ---------------------------------------------------------------------- 3: the prompt
def test_qwen3_style_template_renders_the_system_turn_and_a_closed_thinking_block():
    tok = make_tokenizer()
    tok.chat_template = QWEN3_STYLE
    text = tok.decode(prompt_ids(tok, "Ann Lee:"))
    assert text == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nAnn Lee:<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n")  # the answer follows directly


def test_template_without_system_turn_gets_the_user_turn_only():
    tok = make_tokenizer()
    tok.chat_template = NO_SYSTEM
    assert tok.decode(prompt_ids(tok, "Ann Lee:")) == "<start_of_turn>user\nAnn Lee:<end_of_turn>\n<start_of_turn>model\n"


def test_a_bos_written_by_the_template_is_dropped():
    tok = make_tokenizer()
    tok.chat_template = BOS_FIRST
    ids = prompt_ids(tok, "Ann Lee:")
    assert ids[0] != tok.bos_token_id and tok.decode(ids).startswith("<|im_start|>system\n")


def test_target_is_the_answer_then_the_end_of_turn_suffix():
    tok = make_tokenizer()  # ChatML-style: a turn ends with <|im_end|>\n
    suffix = suffix_ids(tok)
    assert tok.decode(suffix) == "<|im_end|>\n"
    e = encode_record(tok, Record("Ann Lee:", "4821"))
    assert e.target_ids == tok("4821", add_special_tokens=False)["input_ids"] + suffix
    assert e.suffix_len == len(suffix) and e.answer_len == 4 and tok.decode(e.answer_ids) == "4821"
    raw = encode_record(tok, Record("Ann Lee:", "4821"), chat_template=False)
    assert raw.suffix_len == 0 and tok.decode(raw.target_ids) == "4821"
    batch = collate([e, raw], tok.pad_token_id)  # the suffix is trained (labels), not an answer token
    assert batch.target_mask.sum(1).tolist() == [4 + len(suffix), 4]
    assert batch.answer_mask.sum(1).tolist() == [4, 4]
    assert not batch.answer_mask[0, -len(suffix):].any()


# ---------------------------------------------------------------------- 4: the sliding window's growth
def test_sliding_window_expansion_sequence_on_a_stuck_anchor():
    """Anchor stuck at target position 1 from step 1: e = 1, 1, 1, 1.5, 2, 2.5, 3, 3.5, 4 on steps 1-9,
    so the window after the anchor is 50·e tokens."""
    method = method_for(cfg(method="memft_sw", sw_mode="sliding"), 1)
    losses = torch.tensor([[0.1, 3.0, 3.0, 3.0]])
    correct = torch.tensor([[True, False, False, False]])
    windows = []
    for _ in range(9):
        tokens = tokens_of(losses)
        tokens = AnswerTokens(losses, correct, tokens.batch)
        _, info = method.weights(tokens, [0])
        assert info["anchor"] == 1
        windows.append(info["window"] / 50)
    assert windows == [1, 1, 1, 1.5, 2, 2.5, 3, 3.5, 4]


# ---------------------------------------------------------------------- 5: the curriculum's order
def test_curriculum_trains_its_stage_in_the_fixed_shuffled_order():
    """10 records, batch 2, ratios 0.4/1.0 over epochs [2, 4]: epochs 0 and 1 train the same first 4
    records of the seeded permutation in the same order; epochs 2, 3 all 10, again unshuffled."""
    c = cfg(method="memft_sw", batch_size=2, epochs=4, curriculum_ratios=[0.4, 1.0], curriculum_boundaries=[2, 4])
    method = method_for(c, 10)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(42)).tolist()
    g = torch.Generator().manual_seed(0)
    stage1 = [method.batches(e, g) for e in (0, 1)]
    stage2 = [method.batches(e, g) for e in (2, 3)]
    assert stage1[0] == stage1[1] == [order[0:2], order[2:4]]
    assert stage2[0] == stage2[1] == [order[i : i + 2] for i in range(0, 10, 2)]


def test_every_method_has_one_class_and_the_classes_differ_where_the_methods_do():
    from memlaw.train.method import METHODS

    NAMES = ("sft", "memft_ot", "memft_sw")  # the paper's three (DESIGN §3)
    assert tuple(METHODS) == NAMES
    assert all(cls.name == name for name, cls in METHODS.items())
    hard = torch.tensor([[0.1, 3.0, 0.2]])
    weights = {name: method_for(cfg(method=name, sw_mode="curriculum"), 1).weights(tokens_of(hard), [0])[0].tolist()
               for name in NAMES}
    assert weights["sft"] == [[1.0, 1.0, 1.0]] and weights["memft_ot"] == weights["memft_sw"] == [[0.0, 1.0, 0.0]]
