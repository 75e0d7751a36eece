"""`make demo`: memorize a small PhoneBook on the default model at two ranks and print a table."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .data.phonebook import generate_phonebook
from .io import write_jsonl
from .model.loading import load_tokenizer
from .train.trainer import train

COLUMNS = ("rank", "EM", "token acc", "final loss", "certified", "seconds")


def format_table(rows: list[dict]) -> str:
    lines = ["  ".join(f"{c:>10}" for c in COLUMNS)]
    for r in rows:
        cells = (r["rank"], f"{r['exact_match']:.3f}", f"{r['token_accuracy']:.3f}", f"{r['final_loss']:.4f}",
                 f"{r['certified_fraction']:.3f}", f"{r['train_seconds']:.1f}")
        lines.append("  ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def run_demo(out: Path, ranks: list[int], records: int = 16, epochs: int = 60, model: str = "default") -> list[dict]:
    data = out / "phonebook.jsonl"
    rows = generate_phonebook(load_tokenizer(model), seed=42, records=records)
    write_jsonl(data, rows)
    print(f"demo: {records} PhoneBook records, {sum(r['target_len'] for r in rows)} answer tokens -> {data}")
    results = []
    for rank in ranks:
        # CPU-sized budget: no dropout and a higher lr than the 8B reference settings.
        cfg = TrainConfig(data=str(data), model=model, rank=rank, epochs=epochs, batch_size=8, lr=0.05, dropout=0.0)
        cfg.validate()
        print(f"demo: rank {rank}")
        metrics = train(cfg, out / f"rank{rank}", overwrite=True)
        results.append({"rank": rank, **metrics})
    print()
    print(format_table(results))
    print(f"\nruns: {', '.join(str(out / f'rank{r}') for r in ranks)}")
    return results
