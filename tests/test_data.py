"""Readers on the reference files, and the PhoneBook / Long-Context generators."""

from __future__ import annotations

import json
import re

import pytest

from conftest import make_tokenizer
from memlaw.cli import main
from memlaw.data.long_context import QUESTION, generate_long_context, natural_text, ordinary_token_ids
from memlaw.data.phonebook import generate_phonebook
from memlaw.data.records import load_records


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("name, n, target_len", [("phonebook_qwen_PB1000.jsonl", 100, 10), ("phonebook_llama_PB1000.jsonl", 250, 4)])
def test_reads_reference_phonebook(reference_data, name, n, target_len):
    path = reference_data / name
    records = load_records(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == n == len(rows)
    assert all(re.fullmatch(r"\d{10}", r.target) for r in records)
    assert [r.query for r in records] == [row["query"] for row in rows]
    assert [r.id for r in records] == [row["id"] for row in rows]
    assert sum(row["target_len"] for row in rows) == 1000 and rows[0]["target_len"] == target_len


@pytest.mark.parametrize("name", ["long_context_noise_0.jsonl", "long_context_random.jsonl"])
@pytest.mark.parametrize("length", [50, 200])
def test_reads_reference_long_context(reference_data, tok, name, length):
    (record,) = load_records(reference_data / name, tokenizer=tok, length=length)
    matching = json.loads((reference_data / name).read_text())["matching"]
    assert record.query == QUESTION
    assert len(record.target_ids) == length
    assert list(record.target_ids) == tok(matching, add_special_tokens=False)["input_ids"][:length]
    assert record.target == tok.decode(record.target_ids)  # the text is for display; ids define the target
    if "\ufffd" not in record.target:  # a cut inside a multi-byte character cannot be a prefix
        assert matching.startswith(record.target)


def test_phonebook_records_are_unique_and_nested(tok):
    big = generate_phonebook(tok, seed=7, records=300)
    small = generate_phonebook(tok, seed=7, records=40)
    assert big[:40] == small  # nested record sets
    assert len({r["query"] for r in big}) == 300 and len({r["id"] for r in big}) == 300
    for r in big:
        assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-zA-Z]+:", r["query"])
        assert re.fullmatch(r"\d{10}", r["target"])
        assert r["target_len"] == len(tok(r["target"], add_special_tokens=False)["input_ids"])
    assert generate_phonebook(tok, seed=8, records=40) != small


def test_phonebook_length_counts_answer_tokens(tok):
    rows = generate_phonebook(tok, seed=1, length=95)
    total = sum(r["target_len"] for r in rows)
    assert total >= 95 and total - rows[-1]["target_len"] < 95  # stops as soon as the length is reached


def test_phonebook_cli_writes_reference_format(tiny_model_dir, tmp_path):
    out = tmp_path / "pb.jsonl"
    assert main(["data", "phonebook", "--records", "12", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"id", "query", "target", "target_len"}
    assert len(load_records(out)) == 12


def test_long_context_source_ships_with_python():
    text = natural_text()
    assert len(text) > 100_000 and "the" in text


@pytest.mark.parametrize("ratio, fraction", [("r0", 0.0), ("r40", 0.4), ("r100", 1.0)])
def test_long_context_replaces_that_fraction(tok, ratio, fraction):
    row = generate_long_context(tok, ratio, length=80, seed=3)
    span = 80 + max(16, 80 // 4)
    assert row["noise_count"] == round(fraction * span) == len(row["noise_positions"])
    assert row["question"] == QUESTION and row["length"] == 80
    source = tok(natural_text(), add_special_tokens=False)["input_ids"][:span]
    if ratio == "r0":
        assert row["matching"] == tok.decode(source)
    assert generate_long_context(tok, ratio, length=80, seed=3) == row  # seeded
    (record,) = load_records_from(row, tok)
    assert len(record.target_ids) == 80


def load_records_from(row, tok, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lc.jsonl"
        path.write_text(json.dumps(row) + "\n")
        return load_records(path, tokenizer=tok)  # the file's own "length" is the default


def test_random_tokens_are_ordinary(tok):
    vocab = set(ordinary_token_ids(tok))
    assert not vocab & set(tok.all_special_ids)
    # 250 random draws from 261 ids: without the exclusion a special token would almost surely appear
    row = generate_long_context(tok, "r100", length=200, seed=0, text="x" * 500)
    assert row["noise_count"] == 250
    assert not any(s in row["matching"] for s in tok.all_special_tokens)


def test_long_context_cli_with_text_file(tiny_model_dir, tmp_path):
    text = tmp_path / "source.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "lc.jsonl"
    rc = main(["data", "long-context", "--ratio", "r20", "--length", "60", "--text", str(text),
               "--model", str(tiny_model_dir), "--out", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())
    assert row["noise_ratio"] == 0.2 and row["length"] == 60


def test_long_context_bad_ratio(tiny_model_dir, tmp_path, capsys):
    rc = main(["data", "long-context", "--ratio", "r30", "--length", "60", "--model", str(tiny_model_dir),
               "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2 and "unknown ratio 'r30'" in capsys.readouterr().err
