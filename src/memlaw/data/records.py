"""Records: (query, target) pairs, read from JSONL in memlaw's or the reference formats.

Accepted line formats
* records / PhoneBook: ``{"query": str, "target": str, "id"?: any, "target_len"?: int, "info_bits"?: number}``
  (``info_bits``: the information of the answer, if known; memlaw.data.information)
* Long-Context:        ``{"question": str, "matching": str, "matching_ids"?: [int], ...}`` — the
  target is the first ``length`` tokens of ``matching`` (needs a tokenizer and a length). memlaw's
  generator also stores the exact ids (``matching_ids``, made for the tokenizer named in
  ``tokenizer``): they are the target whenever they decode to ``matching`` with the model's
  tokenizer, since re-tokenizing noisy text can merge or split tokens; with another tokenizer, as
  for the reference's files, the text is tokenized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import MemlawError


@dataclass(frozen=True)
class Record:
    query: str
    target: str
    id: Any = None
    answer_ids: tuple[int, ...] | None = None  # the answer's tokens, set when it is defined in token space (Long-Context)
    info_bits: float | None = None  # the answer's information, if the line declares it (memlaw.data.information)
    # Long-Context made for this tokenizer: the target's randomly replaced positions and the bits each holds
    noise_positions: tuple[int, ...] | None = None
    noise_bits: float | None = None


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _require_strings(obj: dict, keys: tuple[str, ...], where: str, note: str = "") -> None:
    for key in keys:
        if key not in obj:
            raise MemlawError(f"{where}: missing field '{key}'{note}")
        if not isinstance(obj[key], str):
            raise MemlawError(f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}")


def _matching_ids(obj: dict, where: str, tokenizer) -> list[int] | None:
    """The stored ``matching_ids`` if they were made for `tokenizer` (they decode to ``matching``)."""
    ids = obj.get("matching_ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(type(i) is int and i >= 0 for i in ids):
        raise MemlawError(f"{where}: field 'matching_ids' must be a list of token ids")
    if any(i >= len(tokenizer) for i in ids) or tokenizer.decode(ids) != obj["matching"]:
        return None  # made for another tokenizer: only the text carries over
    return ids


def parse_line(obj: Any, where: str, tokenizer=None, length: int | None = None) -> Record:
    if not isinstance(obj, dict):
        raise MemlawError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "query" in obj or "target" in obj:
        _require_strings(obj, ("query", "target"), where)
        if not obj["target"]:
            raise MemlawError(f"{where}: empty target")
        info = obj.get("info_bits")
        if info is not None and (isinstance(info, bool) or not isinstance(info, (int, float)) or not info >= 0):
            raise MemlawError(f"{where}: field 'info_bits' must be a number >= 0, got {info!r}")
        return Record(query=obj["query"], target=obj["target"], id=obj.get("id"),
                      info_bits=None if info is None else float(info))
    if "question" in obj or "matching" in obj:
        _require_strings(obj, ("question", "matching"), where, " (Long-Context format)")
        length = length if length is not None else obj.get("length")
        if length is None:
            raise MemlawError(f"{where}: Long-Context data needs --length (the number of target tokens)")
        if tokenizer is None:  # pragma: no cover - callers always pass one
            raise MemlawError(f"{where}: Long-Context data needs the model's tokenizer")
        ids = _matching_ids(obj, where, tokenizer)
        noise = None
        if ids is not None and isinstance(obj.get("noise_positions"), list):  # positions of this tokenizer's ids
            noise = tuple(p for p in obj["noise_positions"] if type(p) is int and 0 <= p < int(length))
        if ids is None:
            ids = tokenizer(obj["matching"], add_special_tokens=False)["input_ids"]
        ids = ids[: int(length)]
        if not ids:
            raise MemlawError(f"{where}: empty target ('matching' has no tokens)")
        if len(ids) < int(length):
            raise MemlawError(f"{where}: 'matching' has only {len(ids)} tokens, fewer than --length {length}")
        bits = None
        if noise is not None:
            from .information import noise_token_bits

            bits = noise_token_bits(tokenizer)
        return Record(query=obj["question"], target=tokenizer.decode(ids), id=obj.get("id"), answer_ids=tuple(ids),
                      noise_positions=noise, noise_bits=bits)
    raise MemlawError(f"{where}: missing fields 'query' and 'target' (or 'question' and 'matching')")


def _json_lines(path: str | Path) -> Iterator[tuple[int, str, Any]]:
    """(line number, "file:line", parsed object) for every non-blank line of a JSONL file; one MemlawError per problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MemlawError(f"data file {path} does not exist")
    except (OSError, UnicodeDecodeError) as e:
        raise MemlawError(f"cannot read data file {path}: {e}")
    for n, line in enumerate(text.split("\n"), start=1):  # JSON strings may hold U+2028
        if not line.strip():
            continue
        where = _where(path, n)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MemlawError(f"{where}: malformed JSON ({e.msg} at column {e.colno})")
        yield n, where, obj


def load_records(path: str | Path, tokenizer=None, length: int | None = None) -> list[Record]:
    """Read and validate a records JSONL file; every error names the file and line."""
    records: list[Record] = []
    seen: dict[str, tuple[str, int]] = {}
    for n, where, obj in _json_lines(path):
        record = parse_line(obj, where, tokenizer, length)
        if record.query in seen:
            target, first = seen[record.query]
            if target != record.target:
                raise MemlawError(f"{where}: duplicate query {record.query!r} with a different target (first at line {first})")
            continue  # an exact repeat adds nothing
        seen[record.query] = (record.target, n)
        records.append(record)
    if not records:
        raise MemlawError(f"{path}: no records")
    return records


def load_queries(path: str | Path) -> list[dict]:
    """Questions to ask (`memlaw ask --data`): JSONL objects with a string "query" (other keys kept)."""
    rows = []
    for _, where, obj in _json_lines(path):
        if not isinstance(obj, dict):
            raise MemlawError(f"{where}: expected a JSON object with a \"query\", got {type(obj).__name__}")
        _require_strings(obj, ("query",), where)
        rows.append(obj)
    if not rows:
        raise MemlawError(f"{path}: no queries")
    return rows
