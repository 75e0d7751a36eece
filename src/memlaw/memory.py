"""A memorized run as an object: ask it questions, add records to it, save it.

This is the user-facing workflow on top of the run folder (memlaw.rundir): `memlaw ask`,
`memlaw memorize --into` and the Python API (`memlaw.memorize(records, rank=...)`) all go
through :class:`Memory`. A question is answered exactly as training built its prompt
(memlaw.data.encoding) and as evaluation decodes (greedy, memlaw.evaluate.recall), so asking a
run's own query gives the answer that its records.jsonl reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import MemlawError
from .rundir import RunDir

MIN_NEW_TOKENS = 16  # `ask` generates at most max(this, the run's longest answer + its end of turn) tokens


@dataclass
class Answer:
    """The greedy answer to one query, each token with the probability the model gave it."""

    query: str
    text: str
    token_ids: list[int]
    tokens: list[str]  # each token's text
    probs: list[float]
    ended: bool  # the model closed its turn (else the token limit cut it)
    record: dict[str, Any] | None = None  # the run's record with this query (records.jsonl), if any

    @property
    def min_prob(self) -> float | None:
        return min(self.probs) if self.probs else None

    @property
    def matches_target(self) -> bool | None:
        """Whether the answer is the record's target (None: the query is not one of the run's records)."""
        return None if self.record is None else self.text == self.record["target"]

    @property
    def certified(self) -> bool | None:
        return None if self.record is None else bool(self.record.get("certified"))

    def to_dict(self) -> dict[str, Any]:
        row = {"query": self.query, "answer": self.text, "token_probs": [round(p, 6) for p in self.probs],
               "min_prob": None if self.min_prob is None else round(self.min_prob, 6), "ended": self.ended,
               "in_run": self.record is not None}
        if self.record is not None:
            row.update(id=self.record.get("id"), target=self.record["target"], matches_target=self.matches_target,
                       certified=self.certified)
        return row


@dataclass
class Memory:
    """A run folder loaded for use: the base model with the run's adapter, and the run's records."""

    path: Path
    session: Any  # memlaw.session.Session
    records: dict[str, dict] = field(default_factory=dict)  # query -> records.jsonl row

    @classmethod
    def load(cls, run_dir: str | Path) -> Memory:
        """Load a finished run (config.yaml, adapter, records.jsonl) written by train / memorize."""
        from .session import saved_session

        run = RunDir(run_dir)
        if not run.path.is_dir():
            raise MemlawError(f"run folder {run.path} does not exist")
        cfg = run.read_config()
        rows = run.read_records() if run.records_path.is_file() else []
        session = saved_session(run.path, cfg)
        return cls(run.path, session, {r["query"]: r for r in rows if isinstance(r, dict) and "query" in r})

    @property
    def max_new_tokens(self) -> int:
        """Enough for the run's longest answer and its end of turn (at least MIN_NEW_TOKENS)."""
        from .data.encoding import suffix_ids

        tok, cfg = self.session.loaded.tokenizer, self.session.cfg
        longest = max((len(tok(r["target"], add_special_tokens=False)["input_ids"]) for r in self.records.values()), default=0)
        return max(MIN_NEW_TOKENS, longest + len(suffix_ids(tok, cfg.chat_template)) + 1)

    def ask(self, query: str, max_new_tokens: int | None = None) -> Answer:
        return self.ask_many([query], max_new_tokens)[0]

    def ask_many(self, queries: Iterable[str], max_new_tokens: int | None = None) -> list[Answer]:
        """Greedy answers, in batches, each ending where the model closes its turn or at the token limit."""
        from .data.encoding import prompt_ids, suffix_ids
        from .evaluate.recall import greedy_generate

        queries = list(queries)
        tok, cfg = self.session.loaded.tokenizer, self.session.cfg
        limit = max_new_tokens or self.max_new_tokens
        suffix = suffix_ids(tok, cfg.chat_template)
        stop = suffix[0] if suffix else tok.eos_token_id
        prompts = [prompt_ids(tok, q, cfg.chat_template) for q in queries]
        out = greedy_generate(self.session.adapter.model, prompts, [limit] * len(prompts), self.session.pad_id,
                              cfg.eval_batch_size, self.session.loaded.device, stop=stop)
        answers = []
        for q, (ids, probs) in zip(queries, out):
            answers.append(Answer(q, tok.decode(ids), ids, [tok.decode([i]) for i in ids], probs,
                                  ended=len(ids) < limit, record=self.records.get(q)))
        return answers
