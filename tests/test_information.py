"""Memory counted as information (memlaw.data.information): bits per record, bits_memorized, the format floor."""

from __future__ import annotations

import json
import math

import pytest

from conftest import write_records
from memlaw.cli import main
from memlaw.data.information import (BASE_LOSS, DECLARED, LINEAR_RULE, LONG_CONTEXT, PHONEBOOK, PHONEBOOK_BITS,
                                     format_floor_nats, linear_rule_bits, linear_rule_record, noise_token_bits,
                                     record_information)
from memlaw.data.records import Record


def records(*pairs, info=None):
    return [Record(q, t, info_bits=None if info is None else info[i]) for i, (q, t) in enumerate(pairs)]
from memlaw.errors import MemlawError
from memlaw.rundir import RunMetrics


def test_phonebook_numbers_hold_31_9_bits():
    assert PHONEBOOK_BITS == pytest.approx(2 + 9 * math.log2(10)) == pytest.approx(31.897, abs=1e-3)
    info = record_information(records(("A:", "8332181960"), ("B:", "7890838637")), [[40.0], [41.0]])
    assert info.source == PHONEBOOK and info.bits == (PHONEBOOK_BITS, PHONEBOOK_BITS)
    assert info.of([True, False]) == PHONEBOOK_BITS
    # a format-only model's summed loss on the answers is the information itself, in nats
    assert format_floor_nats(info) == pytest.approx(2 * (math.log(4) + 9 * math.log(10)))


@pytest.mark.parametrize("target", ["5332181960", "833218196", "83321819600", "8332-181960"])
def test_other_targets_are_not_read_as_phonebook(target):
    info = record_information(records(("A:", target)), [[4.0, 6.0]])
    assert info.source == BASE_LOSS and info.bits == (pytest.approx(10.0 / math.log(2)),)


def test_declared_bits_win_and_sources_mix():
    info = record_information(records(("A:", "8332181960"), ("B:", "KT-4471-B"), ("C:", "x"), ("f(3, 4) =", "36"),
                                      info=[None, 12.5, None, None]), [[40.0], [30.0], [1.0], [5.0]])
    assert info.bits == (PHONEBOOK_BITS, 12.5, pytest.approx(1 / math.log(2)), linear_rule_bits())
    assert info.source == f"mixed: {BASE_LOSS}, {DECLARED}, {LINEAR_RULE}, {PHONEBOOK}"


def test_long_context_counts_random_tokens_exactly_and_natural_ones_by_the_base_loss():
    record = Record("Q", "text", answer_ids=(5, 6, 7, 8), noise_positions=(0, 2), noise_bits=15.0)
    info = record_information([record], [[1.0, 2.0, 3.0, 4.0]])
    assert info.source == LONG_CONTEXT and info.bits == (pytest.approx(2 * 15.0 + (2.0 + 4.0) / math.log(2)),)


def test_long_context_records_made_for_the_tokenizer_carry_their_noise(tiny_model_dir, tmp_path):
    from memlaw.data.records import load_records
    from memlaw.model.loading import load_tokenizer

    out = tmp_path / "lc.jsonl"
    assert main(["data", "long-context", "--ratio", "r40", "--length", "50", "--out", str(out),
                 "--model", str(tiny_model_dir)]) == 0
    tok = load_tokenizer(str(tiny_model_dir))
    (record,) = load_records(out, tok, 50)
    assert record.noise_bits == pytest.approx(noise_token_bits(tok)) == pytest.approx(math.log2(256))  # byte tokens
    assert len(record.noise_positions) == 20 and max(record.noise_positions) < 50  # 40 % of the first 50 tokens


def test_linear_rule_answers_hold_their_entropy():
    assert 9 < linear_rule_bits() < math.log2(793)  # 793 possible answers, not equally likely
    assert linear_rule_bits(1) == pytest.approx(2.0)  # 3x + 5y + 7 on {0, 1}²: 4 distinct answers
    assert linear_rule_record("f(3, 4) =", "36") and not linear_rule_record("f(3, 4) =", "37")
    assert not linear_rule_record("f(300, 4) =", "927")


def test_legacy_metrics_read_bits_stored_as_loss_bits():
    values = dict(n_records=2, target_tokens=9, exact_match=0.5, token_accuracy=0.75, free_run_token_accuracy=0.5,
                  initial_loss=3.0, final_loss=1.0, delta_loss=2.0, initial_answer_loss=3.2, final_answer_loss=1.2,
                  delta_answer_loss=2.0, stubborn_tokens=1, certified_fraction=0.5, certificate_violations=0,
                  bits_stored=25.9, trainable_params=128, bits_per_param=0.2)
    m = RunMetrics.from_dict(values, "old/metrics.json")
    assert m.loss_bits == 25.9 and m.bits_memorized is None


def test_declared_info_bits_are_validated(tmp_path):
    from memlaw.data.records import load_records

    good = write_records(tmp_path / "good.jsonl", [{"query": "a", "target": "b", "info_bits": 7}])
    assert load_records(good)[0].info_bits == 7.0
    bad = write_records(tmp_path / "bad.jsonl", [{"query": "a", "target": "b", "info_bits": -1}])
    with pytest.raises(MemlawError, match=r"bad.jsonl:1: field 'info_bits' must be a number >= 0"):
        load_records(bad)


def test_phonebook_run_counts_recalled_records_and_the_floor(tiny_model_dir, tmp_path):
    """A PhoneBook run: bits_memorized = 31.9 x records recalled exactly, never more; bits_per_param from it;
    the format floor is the information over the trained tokens (the suffix's floor is 0)."""
    rows = [{"id": i, "query": q, "target": t} for i, (q, t) in enumerate(
        [("Ann Lee:", "8332181960"), ("Bob Ray:", "7890838637"), ("Cy Wu:", "6123450987")])]
    data = write_records(tmp_path / "pb.jsonl", rows)
    for epochs in ("1", "60"):
        out = tmp_path / f"run{epochs}"
        assert main(["train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--quiet",
                     "--layer", "1", "--rank", "4", "--lr", "0.1", "--dropout", "0", "--batch-size", "3",
                     "--epochs", epochs]) == 0
        m = json.loads((out / "metrics.json").read_text())
        recalled = sum(json.loads(line)["exact"] for line in (out / "records.jsonl").read_text().splitlines())
        assert m["information_source"] == PHONEBOOK and m["information_bits"] == pytest.approx(3 * PHONEBOOK_BITS)
        assert m["bits_memorized"] == pytest.approx(recalled * PHONEBOOK_BITS)
        assert m["bits_memorized"] <= recalled * 31.9  # never more than 31.9 bits per record recalled exactly
        assert m["bits_per_param"] == pytest.approx(m["bits_memorized"] / m["trainable_params"])
        trained = m["target_tokens"] + 3 * 2  # 10 digits per record + the tiny tokenizer's 2-token suffix
        assert m["format_floor_loss"] == pytest.approx(3 * PHONEBOOK_BITS * math.log(2) / trained)
        assert m["memorized_delta_loss"] == pytest.approx(m["format_floor_loss"] - m["final_loss"])
    assert json.loads((tmp_path / "run1" / "metrics.json").read_text())["bits_memorized"] == 0.0
    assert json.loads((tmp_path / "run60" / "metrics.json").read_text())["bits_memorized"] > 0
