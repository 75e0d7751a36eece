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

from .config import MEMORIZE_DEFAULTS
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
        from .model.loading import load_model

        run = RunDir(run_dir)
        if not run.path.is_dir():
            raise MemlawError(f"run folder {run.path} does not exist")
        cfg, records = _contents(run)  # checked before the model is loaded
        memory = cls(run.path, None)
        memory._hold(run, load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code), cfg, records)
        return memory

    @property
    def max_new_tokens(self) -> int:
        """Enough for the run's longest answer and its end of turn (at least MIN_NEW_TOKENS)."""
        from .data.encoding import suffix_ids

        tok, cfg = self.session.loaded.tokenizer, self.session.cfg
        longest = max((len(tok(r["target"], add_special_tokens=False)["input_ids"]) for r in self.records.values()), default=0)
        return max(MIN_NEW_TOKENS, longest + len(suffix_ids(tok, cfg.chat_template)) + 1)

    def save(self, folder: str | Path) -> Path:
        """Copy the run folder to `folder` (which must not exist); a data file kept in the run goes along."""
        import shutil

        from .lock import LOCK_FILE

        folder = Path(folder)
        if folder.exists():
            raise MemlawError(f"{folder} exists; save into a new folder")
        shutil.copytree(self.path, folder, ignore=shutil.ignore_patterns(LOCK_FILE))
        run = RunDir(folder)
        data = Path(run.read_config().data)
        if data.parent.resolve() == self.path.resolve():
            run.set_data(folder.resolve() / data.name)
        return folder

    def locality(self, prompts_file: str | Path | None = None):
        """What the unit changes away from its records (memlaw.evaluate.locality.Locality); the unrelated
        prompts of `prompts_file` (one per line, or JSONL "query") instead of the built-in ones."""
        from .evaluate.locality import measure_locality

        return measure_locality(self.session, prompts_file=prompts_file)

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

    def add(self, records: Any, replace: bool = False, out: str | Path | None = None, progress: bool = False,
            on_check=None, locality: bool | str | Path = True, **overrides: Any) -> AddReport:
        """Add records to this memory and train until old and new are all certified (or the step budget ends).

        `records`: a JSONL path, or a list of {"query", "target"[, "id"]} dicts. Training starts from
        the run's adapter (same unit, prompt and model) on old + new records, with certified stopping
        and a 2000-step budget unless `overrides` (TrainConfig fields) say otherwise. The result goes
        to `out`, or by default replaces this run folder, but only if every record ended certified;
        otherwise the attempt goes to RUN.incomplete and this run is unchanged. This object then
        holds the result (or still the unchanged run). A new target for a memorized query is an
        error unless `replace`.
        """
        import shutil
        import uuid

        from .config import replace as cfg_replace
        from .io import replace_folder, write_jsonl
        from .lock import FolderLock
        from .train.trainer import train

        fixed = sorted(set(overrides) & set(UNIT_FIELDS))
        if fixed:
            raise MemlawError(f"adding records keeps the run's unit and prompt: {', '.join(fixed)} cannot change")
        cfg = self.session.cfg
        if cfg.length is not None:
            raise MemlawError(f"{self.path}: a Long-Context run holds one sequence; records can be added to query/target runs only")
        new, where = self._as_records(records)
        merged, added, replaced = merge_records(list(self.records.values()), new, replace, where)
        dest = Path(out) if out is not None else self.path
        if dest.resolve() != self.path.resolve() and dest.exists():
            raise MemlawError(f"--out {dest} exists; give a new folder (or leave --out out to update {self.path})")
        before = {q for q, r in self.records.items() if r.get("certified")}
        train_cfg = cfg_replace(cfg, **{**ADD_DEFAULTS, **overrides}).validate()
        work = dest.parent / f".{dest.name}.adding-{uuid.uuid4().hex[:8]}"
        if added == 0:  # every record is memorized already, with the same target
            certified = len(before) == len(self.records)
            return AddReport(0, 0, len(self.records), [], [], certified, float("nan"), 0)
        tensors, loaded = self.session.adapter.state_dict(), self.session.loaded
        with FolderLock(self.path, "memlaw memorize --into"):
            detached = False
            try:
                work.mkdir(parents=True)
                write_jsonl(work / DATA_FILE, merged)
                train_cfg = cfg_replace(train_cfg, data=str(work / DATA_FILE))
                self.session.close()
                detached = True
                metrics = train(train_cfg, work, loaded=loaded, init_tensors=tensors, progress=progress, on_check=on_check,
                                locality=locality)
                complete = metrics.certified_fraction == 1.0
                # An in-place update happens only if every record is certified: an incomplete attempt never
                # replaces a memory that still holds its records; it goes beside it.
                target = dest if complete or out is not None else self.path.with_name(self.path.name + INCOMPLETE)
                RunDir(work).set_data(target.resolve() / DATA_FILE)
                replace_folder(work, target)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                if detached:
                    self._reattach(self.path, loaded)  # the run folder is as it was
                raise
        rows = RunDir(target).read_records()
        after = {r["query"] for r in rows if r.get("certified")}
        self._reattach(target if target == dest else self.path, loaded)
        new_queries = {r.query for r in new}
        return AddReport(
            new=added, new_certified=len(new_queries & after), old=len(merged) - added,
            old_lost=sorted(q for q in before - after if q not in replaced), replaced=replaced,
            all_certified=complete, bits_per_param=metrics.bits_per_param, steps=metrics.steps, saved_to=target)

    def _reattach(self, run_dir: Path, loaded) -> None:
        """Hold `run_dir` with the already loaded base model: its config, adapter and records."""
        run = RunDir(run_dir)
        self._hold(run, loaded, *_contents(run))

    def _hold(self, run: RunDir, loaded, cfg, records: dict[str, dict]) -> None:
        from .session import saved_session

        self.path, self.records = run.path, records
        self.session = saved_session(run.path, cfg, loaded)

    def _as_records(self, records: Any) -> tuple[list, str]:
        """Records from a JSONL path or a list of dicts, checked as `memlaw train` checks its data."""
        from .data.records import Record, load_records, parse_line

        if isinstance(records, (str, Path)):
            return load_records(records, self.session.loaded.tokenizer), str(records)
        out = [r if isinstance(r, Record) else parse_line(r, f"records[{i}]") for i, r in enumerate(records)]
        if not out:
            raise MemlawError("no records to add")
        return out, "records"


def _contents(run: RunDir) -> tuple[Any, dict[str, dict]]:
    """A run's config and its records by query (none before it was evaluated)."""
    cfg = run.read_config()
    rows = run.read_records() if run.records_path.is_file() else []
    return cfg, {r["query"]: r for r in rows}


# ---------------------------------------------------------------------- adding records
UNIT_FIELDS = ("model", "component", "layer", "rank", "target_modules", "lora_alpha", "a_init", "chat_template",
               "trust_remote_code", "length", "preserve_gate")  # what defines the unit and its prompts: fixed when adding records
ADD_DEFAULTS = {"stop_when": "certified", "max_steps": 2000, "epochs": 10000}
DATA_FILE = "data.jsonl"  # the records of a memory grown with add(): old and new, in the run folder
INCOMPLETE = ".incomplete"  # RUN.incomplete: an in-place add whose budget ran out (RUN itself is unchanged)


@dataclass
class AddReport:
    """What `add` did: how many new records are certified and which old ones were lost."""

    new: int  # new records trained (exact repeats of old ones are not counted)
    new_certified: int
    old: int
    old_lost: list[str]  # queries certified before and not after
    replaced: list[str]  # queries whose target was replaced (replace=True)
    all_certified: bool
    bits_per_param: float
    steps: int
    saved_to: Path | None = None  # where the result went (the memory itself, --out, or RUN.incomplete)

    def lines(self) -> list[str]:
        lost = f"{len(self.old_lost)}" + (f" ({', '.join(map(repr, self.old_lost[:5]))}{' …' if len(self.old_lost) > 5 else ''})"
                                         if self.old_lost else "")
        return [f"new records certified: {self.new_certified}/{self.new}" + (f" ({len(self.replaced)} replaced a target)" if self.replaced else ""),
                f"old records lost: {lost} of {self.old}",
                f"steps: {self.steps}; bits per parameter: {self.bits_per_param:.4f}"]


def merge_records(old: list[dict], new: list, replace: bool, where: str) -> tuple[list[dict], int, list[str]]:
    """Old records (records.jsonl rows) and new ones (memlaw.data.records.Record) as one list of
    {"id", "query", "target"}: exact repeats dropped, a new target for an old query an error unless
    `replace`. Returns (records, new records added, queries replaced)."""
    merged = {r["query"]: {"id": r.get("id"), "query": r["query"], "target": r["target"]} for r in old}
    added, replaced = 0, []
    for rec in new:
        known = merged.get(rec.query)
        if known is not None and known["target"] == rec.target:
            continue
        if known is not None:
            if not replace:
                raise MemlawError(f"{where}: query {rec.query!r} is already memorized with target {known['target']!r}, "
                                  f"not {rec.target!r} (--replace to change it)")
            replaced.append(rec.query)
            known["target"] = rec.target
        else:
            merged[rec.query] = {"id": rec.id if rec.id is not None else f"added-{len(merged)}", "query": rec.query,
                                 "target": rec.target}
        added += 1
    return list(merged.values()), added, replaced


# ---------------------------------------------------------------------- the Python entry point
def memorize(records: Any, rank: int = 8, out: str | Path | None = None, model: str = "default",
             progress: bool = False, locality: bool | str | Path = True, **config: Any) -> Memory:
    """Memorize `records` (a JSONL path, or a list of {"query", "target"[, "id"]} dicts) into a rank-`rank`
    unit with `memlaw memorize`'s defaults (SFT until every record is certified, 2000-step budget);
    `config`: any other TrainConfig field. The run goes to `out` (default: a new temporary folder;
    `.save(DIR)` keeps it) with the records in it as data.jsonl, and comes back loaded::

        mem = memlaw.memorize([{"query": "Ann Lee:", "target": "4821"}], rank=4)
        mem.ask("Ann Lee:").text           # '4821'
        mem.add([{"query": "Bob Ray:", "target": "90"}])
        mem.save("runs/phones")
    """
    import tempfile

    from .config import TrainConfig
    from .data.records import Record, load_records, parse_line
    from .io import write_jsonl
    from .model.loading import load_model
    from .train.trainer import train

    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="memlaw-memory-"))
    if isinstance(records, (str, Path)):
        rows = [{"id": r.id, "query": r.query, "target": r.target} for r in load_records(records)]
    else:
        parsed = [r if isinstance(r, Record) else parse_line(r, f"records[{i}]") for i, r in enumerate(records)]
        rows = [{"id": r.id if r.id is not None else i, "query": r.query, "target": r.target} for i, r in enumerate(parsed)]
    if not rows:
        raise MemlawError("no records to memorize")
    write_jsonl(out / DATA_FILE, rows)
    cfg = TrainConfig(**{**MEMORIZE_DEFAULTS, "model": model, "rank": rank, **config, "data": str(out / DATA_FILE)}).validate()
    loaded = load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
    train(cfg, out, loaded=loaded, progress=progress, locality=locality)
    memory = Memory(out, None)
    memory._reattach(out, loaded)
    return memory
