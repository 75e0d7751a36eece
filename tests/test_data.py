"""Readers on the reference files, and the PhoneBook / Long-Context generators."""

from __future__ import annotations

import bisect
import hashlib
import json
import re

import pytest

from conftest import make_tokenizer
from memlaw.cli import main
from memlaw.data.benchmarks import DataSpec, generate
from memlaw.data.long_context import (
    QUESTION,
    RATIOS,
    generate_long_context,
    natural_text,
    noise_positions,
    noise_total,
    ordinary_token_ids,
    prefix_noise_count,
)
from memlaw.data.names import name_pools
from memlaw.data.phonebook import generate_phonebook
from memlaw.data.records import load_records
from memlaw.errors import MemlawError
from memlaw.model.loading import load_tokenizer


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
    assert len(record.answer_ids) == length
    assert list(record.answer_ids) == tok(matching, add_special_tokens=False)["input_ids"][:length]
    assert record.target == tok.decode(record.answer_ids)  # the text is for display; ids define the target
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
    assert row["noise_count"] == round(fraction * 80) == len(row["noise_positions"])  # of the 80 target tokens
    assert row["question"] == QUESTION and row["length"] == 80
    source = tok(natural_text(), add_special_tokens=False)["input_ids"][:80]
    if ratio == "r0":
        assert row["matching"] == tok.decode(source) and row["matching_ids"] == source
    assert generate_long_context(tok, ratio, length=80, seed=3) == row  # seeded
    (record,) = load_records_from(row, tok)
    assert len(record.answer_ids) == 80


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
    # 200 random draws from 261 ids: without the exclusion a special token would almost surely appear
    row = generate_long_context(tok, "r100", length=200, seed=0, text="x" * 500)
    assert row["noise_count"] == 200
    assert not set(row["matching_ids"]) - vocab
    assert not any(s in row["matching"] for s in tok.all_special_tokens)


def test_long_context_cli_with_text_file(tiny_model_dir, tmp_path):  # --text: the deprecated alias of --source
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


# ---------------------------------------------------------------------- PhoneBook: reference parity
# Pinned fingerprint of the name pools (8 602 first, 5 333 last names with faker 40.63).
NAME_POOLS = (8602, 5333, "130691651eb2cc933d13130a2362b5d8a489c532a0495f04c8a46fd223e1608b")


def test_name_pools_are_fakers_pinned_lists():
    """If this fails, the installed Faker edited its name lists, so every generated PhoneBook changed:
    keep faker within the bound in pyproject.toml, or adopt the new lists on purpose (new fingerprint)."""
    first, last = name_pools()
    assert list(first) == sorted(set(first)) and list(last) == sorted(set(last))
    assert all(re.fullmatch(r"[A-Z][a-z]+", n) for n in first)
    assert all(re.fullmatch(r"[A-Z][a-zA-Z]+", n) for n in last)
    digest = hashlib.sha256(("\n".join(first) + "\n\n" + "\n".join(last)).encode()).hexdigest()
    assert (len(first), len(last), digest) == NAME_POOLS


@pytest.fixture(scope="module")
def pb_tok():
    """The default model's tokenizer (SmolLM2: one token per digit); the byte-level one counts alike."""
    try:
        return load_tokenizer("default")
    except MemlawError:
        return make_tokenizer()


@pytest.fixture(scope="module")
def pb32k(pb_tok):
    return generate_phonebook(pb_tok, seed=42, length=32000)


def test_reference_numbers_start_with_6_to_9(reference_data):
    for name in ("phonebook_qwen_PB1000.jsonl", "phonebook_llama_PB1000.jsonl"):
        rows = [json.loads(line) for line in (reference_data / name).read_text().splitlines()]
        assert all(re.fullmatch(r"[6-9]\d{9}", r["target"]) for r in rows)


def test_phonebook_numbers_start_with_6_to_9(pb32k):
    assert all(re.fullmatch(r"[6-9]\d{9}", r["target"]) for r in pb32k)
    assert {r["target"][0] for r in pb32k} == set("6789")
    assert {d for r in pb32k for d in r["target"][1:]} == set("0123456789")


def test_phonebook_32000_tokens_has_reference_sized_name_variety(pb32k):
    n = len(pb32k)
    assert n == 3200  # 10 one-token digits per number, as the reference's Qwen PB32000
    assert len({r["query"] for r in pb32k}) == n and len({r["id"] for r in pb32k}) == n  # no key repeats
    first = {r["query"].split()[0] for r in pb32k}
    last = {r["query"][:-1].split()[1] for r in pb32k}
    # n uniform draws from P names leave P·(1 - (1 - 1/P)^n) distinct ones in expectation (sd about 20):
    # 2 671 of 8 602 first and 2 405 of 5 333 last names at n = 3 200. The bounds sit 8 sd lower, and
    # above the reference's order (about 1 200 first and 2 700 last names in its 3 200 records).
    for seen, pool, bound in ((first, name_pools()[0], 2500), (last, name_pools()[1], 2200)):
        expected = len(pool) * (1 - (1 - 1 / len(pool)) ** n)
        assert len(seen) >= bound and abs(len(seen) - expected) < 150


def test_phonebook_sizes_are_nested_prefixes_and_seeded(pb_tok, pb32k):
    for length in (1000, 8000, 16000):
        rows = generate_phonebook(pb_tok, seed=42, length=length)
        assert rows == pb32k[: len(rows)] and sum(r["target_len"] for r in rows) == length
    assert generate_phonebook(pb_tok, seed=42, records=3200) == pb32k  # same seed, same records
    other = generate_phonebook(pb_tok, seed=43, records=100)
    assert not {r["query"] for r in other} & {r["query"] for r in pb32k[:100]}


# ---------------------------------------------------------------------- Long-Context: reference parity
# The first replaced positions, worked out from floor((2k + 1)·N / 2c) with N = 29 709, c = round(r·N).
FIRST_POSITIONS = {"r0": [], "r20": [2, 7, 12, 17], "r40": [1, 3, 6, 8], "r60": [0, 2, 4, 5, 7], "r80": [0, 1, 3, 4, 5, 6, 8]}


@pytest.mark.parametrize("ratio", ["r0", "r20", "r40", "r60", "r80"])
def test_noise_positions_are_the_references(reference_data, tok, ratio):
    ref = json.loads((reference_data / f"long_context_noise_{ratio[1:]}.jsonl").read_text())
    n = ref["original_token_count"]  # 29 709 Qwen tokens of the LongBench paper
    assert noise_positions(n, ratio) == ref["noise_positions"]  # every one of them
    assert ref["noise_positions"][: len(FIRST_POSITIONS[ratio])] == FIRST_POSITIONS[ratio]
    assert noise_total(n, ratio) == ref["noise_count"] == round(RATIOS[ratio] * n)
    for stat in ref["prefix_ratio_stats"]:  # 50 -> 10 at r20, …
        assert prefix_noise_count(stat["prefix_tokens"], n, ratio) == stat["random_count"]
    # the generator replaces exactly those: a source of n byte tokens, a 600-token target
    row = generate_long_context(tok, ratio, length=600, seed=0, text="a" * n)
    assert row["original_token_count"] == n
    assert row["noise_positions"] == [p for p in ref["noise_positions"] if p < 600]


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("n", [29709, 1000, 997, 7])
def test_every_prefix_has_the_ratio(ratio, n):
    """A prefix of L tokens holds ceil(c·L/N - 1/2) random tokens: r·L when that is whole, else within one."""
    positions = noise_positions(n, ratio)
    assert positions == sorted(set(positions)) and all(0 <= p < n for p in positions)
    percent = round(RATIOS[ratio] * 100)
    for length in range(1, n + 1):
        count = bisect.bisect_left(positions, length)
        assert count == prefix_noise_count(length, n, ratio)
        assert abs(count - percent * length / 100) < 1
        if percent * length % 100 == 0:
            assert count == percent * length // 100


@pytest.fixture(scope="module")
def source_text():
    return natural_text()[:20_000]


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_long_context_targets_are_nested(tok, tmp_path, source_text, ratio):
    short = generate_long_context(tok, ratio, length=300, seed=5, text=source_text)
    long = generate_long_context(tok, ratio, length=600, seed=5, text=source_text)
    assert long["matching_ids"][:300] == short["matching_ids"]  # the target at L is a prefix of that at 2L
    assert [p for p in long["noise_positions"] if p < 300] == short["noise_positions"]
    source = tok(source_text, add_special_tokens=False)["input_ids"]
    for row in (short, long):
        length, ids = row["length"], row["matching_ids"]
        assert len(ids) == length and row["original_token_count"] == len(source)
        assert row["noise_positions"] == noise_positions(len(source), ratio, limit=length)
        assert row["noise_count"] == prefix_noise_count(length, len(source), ratio) == round(RATIOS[ratio] * length)
        replaced = set(row["noise_positions"])
        assert all(ids[i] == source[i] for i in range(length) if i not in replaced)
        assert row["matching"] == tok.decode(ids) and row["tokenizer"] == tok.name_or_path
    path = tmp_path / "lc.jsonl"
    path.write_text(json.dumps(long) + "\n")
    (record,) = load_records(path, tokenizer=tok, length=300)
    assert list(record.answer_ids) == short["matching_ids"]


def test_stored_ids_are_the_target(tok, tmp_path):
    """Re-tokenizing decoded noise loses tokens (random bytes decode to U+FFFD); the stored ids do not."""
    row = generate_long_context(tok, "r100", length=200, seed=1, text="x" * 400)
    assert tok(row["matching"], add_special_tokens=False)["input_ids"][:200] != row["matching_ids"]
    (record,) = load_records_from(row, tok)
    assert list(record.answer_ids) == row["matching_ids"]


def test_ids_for_another_tokenizer_fall_back_to_the_text(tok):
    row = generate_long_context(tok, "r0", length=40, seed=1, text="The quick brown fox jumps over the lazy dog. " * 3)
    text_ids = tok(row["matching"], add_special_tokens=False)["input_ids"]
    for foreign in (row["matching_ids"][::-1], [len(tok) + i for i in range(40)]):  # other text; ids out of range
        (record,) = load_records_from(dict(row, matching_ids=foreign), tok)
        assert list(record.answer_ids) == text_ids[:40]


def test_long_context_cli_source_reference_jsonl(tiny_model_dir, reference_data, tmp_path):
    source = reference_data / "long_context_noise_0.jsonl"
    out = tmp_path / "lc.jsonl"
    rc = main(["data", "long-context", "--ratio", "r20", "--length", "500", "--source", str(source),
               "--model", str(tiny_model_dir), "--out", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())
    tok = load_tokenizer(str(tiny_model_dir))
    paper = tok(json.loads(source.read_text())["matching"], add_special_tokens=False)["input_ids"]
    assert row["source"] == str(source) and row["original_token_count"] == len(paper)
    assert row["noise_count"] == 100 and row["noise_positions"] == noise_positions(len(paper), "r20", limit=500)
    replaced = set(row["noise_positions"])
    assert all(row["matching_ids"][i] == paper[i] for i in range(500) if i not in replaced)
    (record,) = load_records(out, tokenizer=tok)
    assert list(record.answer_ids) == row["matching_ids"]


def test_long_context_source_text_file_through_dataspec(tiny_model_dir, tmp_path):
    source = tmp_path / "story.txt"
    source.write_text("Once upon a time a fox met a crow who held a piece of cheese. " * 10, encoding="utf-8")
    out = tmp_path / "lc.jsonl"
    rc = main(["data", "long-context", "--ratio", "r40", "--length", "60", "--source", str(source),
               "--model", str(tiny_model_dir), "--out", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())
    assert row["source"] == str(source) and row["noise_count"] == 24
    tok = load_tokenizer(str(tiny_model_dir))
    story = tok(source.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    replaced = set(row["noise_positions"])
    assert all(row["matching_ids"][i] == story[i] for i in range(60) if i not in replaced)
    spec = DataSpec("long-context", length=60, ratio="r40", seed=42, source=str(source))
    assert generate(spec, str(tiny_model_dir)) == ([row], None)  # the CLI and the data entry point agree
