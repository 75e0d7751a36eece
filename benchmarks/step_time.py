"""Training-step speed on the default model: plain PEFT vs memlaw without and with the prefix cache.

In one process, on the same PhoneBook (1000 answer tokens), the same layer (the default, 2/3
of the depth), rank 8 and batch 16, SFT objective:

  (a) peft      — what a user would write: PEFT LoRA on that layer's linear modules, a full
                  forward over all layers and full logits (`model(..., labels=...).loss`);
  (b) no-cache  — memlaw's memory unit, answer-only logits, full forward;
  (c) cache     — memlaw with the frozen-prefix activation cache (layers below the adapter
                  computed once, before timing; its build time is reported separately;
                  the prompt opening all records share runs once per batch).

The variants run interleaved in rounds, so machine noise hits all three alike. FLOPs of one
step of each are counted with torch's FlopCounterMode: their ratio is the speed-up a
FLOP-bound machine could at most show.

    .venv/bin/python benchmarks/step_time.py [--rounds 3] [--steps 4] [--device auto] [--dtype auto]
    .venv/bin/python benchmarks/step_time.py --dtype float32,bfloat16   # each in its own process, then
                                                                         # bfloat16's speed over float32's

Prints a table and one JSON line per dtype (and the ratios across dtypes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from memlaw.config import LORA_MODULES, TrainConfig
from memlaw.data.encoding import IGNORE, Encoded
from memlaw.data.phonebook import generate_phonebook
from memlaw.io import write_jsonl
from memlaw.model.forward import AnswerForward
from memlaw.model.loading import load_model, load_tokenizer
from memlaw.model.prefix_cache import PrefixCache
from memlaw.session import new_session
from memlaw.train.method import method_for
from memlaw.train.trainer import optimizer_step


def rss_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def peft_variant(args, layer: int, encoded: list[Encoded], pad_id: int):
    """(a): a fresh copy of the model with PEFT LoRA; returns step(indices)."""
    from peft import LoraConfig, get_peft_model

    loaded = load_model(args.model, args.device, args.dtype)
    model = get_peft_model(loaded.model, LoraConfig(
        r=args.rank, lora_alpha=args.rank, lora_dropout=0.0, target_modules=list(LORA_MODULES),
        layers_to_transform=[layer], task_type="CAUSAL_LM",
    ))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    device = loaded.device

    def step(indices: list[int]) -> None:
        seqs = [encoded[i].prompt_ids + encoded[i].target_ids for i in indices]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for row, (i, seq) in enumerate(zip(indices, seqs)):  # right padding, prompt masked: the usual recipe
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            n_prompt = len(encoded[i].prompt_ids)
            labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--length", type=int, default=1000, help="PhoneBook answer tokens")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (a, b, c each once per round)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per variant per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="a dtype, or several (comma-separated) to compare, one process each")
    args = p.parse_args()
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if len(dtypes) > 1:
        compare_dtypes(dtypes)
    else:
        measure(args)


def compare_dtypes(dtypes: list[str]) -> None:
    """Run each dtype in a child process, one after the other; print their results and rates over the first's."""
    import subprocess

    results = []
    for dtype in dtypes:
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--dtype") if "--dtype" in argv else None
        argv = argv[:i] + argv[i + 2:] if i is not None else argv
        child = subprocess.run([sys.executable, __file__, *argv, "--dtype", dtype], capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"--dtype {dtype} failed:\n{child.stderr}")
        print(child.stdout, end="")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    base = results[0]
    ratios = {r["dtype"]: {n: round(v / base["steps_per_second"][n], 2) for n, v in r["steps_per_second"].items()}
              for r in results[1:]}
    for dtype, ratio in ratios.items():
        print(f"{dtype} / {base['dtype']} steps/s: " + ", ".join(f"{n} {v:.2f}x" for n, v in ratio.items()))
    print(json.dumps({"over": base["dtype"], "speed_ratio": ratios}))


def measure(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pb.jsonl"
        rows = generate_phonebook(load_tokenizer(args.model), seed=42, length=args.length)
        write_jsonl(data, rows)
        cfg = TrainConfig(data=str(data), model=args.model, rank=args.rank, batch_size=args.batch_size,
                          dropout=0.0, device=args.device, dtype=args.dtype, method="sft").validate()
        session = new_session(cfg)
        _, encoded = session.load_data()
        run_cfg = session.cfg
        full = AnswerForward(session.adapter.model, encoded, session.pad_id, session.loaded.device)
        t0 = time.perf_counter()
        cached = session.answer_forward(encoded)
        cache_seconds = time.perf_counter() - t0
        assert cached.cache is not None, "the prefix cache did not build"
        cache_mib = PrefixCache.size_bytes(session.adapter.model, encoded) / 2**20
        layer = run_cfg.layer[0]
        device = session.loaded.device
        cuda = device.type == "cuda"

        method = method_for(run_cfg, len(encoded))  # sft
        optimizer = torch.optim.AdamW(session.adapter.parameters(), lr=1e-3, weight_decay=0.0)
        session.adapter.set_training(True)

        def memlaw_step(forward):
            return lambda idx: optimizer_step(session, forward, [idx], method, optimizer, 1e-3)

        peft_step = peft_variant(args, layer, encoded, session.pad_id)
        variants = {"peft": peft_step, "no-cache": memlaw_step(full), "cache": memlaw_step(cached)}

        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0)).tolist()
        batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        batches = [b for b in batches if len(b) == args.batch_size]  # equal work per step

        flops = {}
        for name, step in variants.items():
            step(batches[0])  # warm-up
            with FlopCounterMode(display=False) as counter:
                step(batches[0])
            flops[name] = counter.get_total_flops()

        seconds = {name: 0.0 for name in variants}
        steps = {name: 0 for name in variants}
        peak_cuda = {name: 0.0 for name in variants}
        k = 0
        for _ in range(args.rounds):
            for name, step in variants.items():
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(batches[k % len(batches)])
                    k += 1
                if cuda:
                    torch.cuda.synchronize()
                    peak_cuda[name] = max(peak_cuda[name], torch.cuda.max_memory_allocated() / 2**20)
                seconds[name] += time.perf_counter() - start
                steps[name] += args.steps

    rate = {name: steps[name] / seconds[name] for name in variants}
    result = {
        "model": args.model, "device": device.type, "dtype": run_cfg.dtype, "layer": layer,
        "num_layers": session.adapter.spec.num_layers, "rank": args.rank, "records": len(rows),
        "answer_tokens": sum(r["target_len"] for r in rows), "batch_size": args.batch_size,
        "steps_per_variant": args.rounds * args.steps,
        "steps_per_second": {n: round(v, 3) for n, v in rate.items()},
        "ratio_cache_over_peft": round(rate["cache"] / rate["peft"], 2),
        "ratio_cache_over_nocache": round(rate["cache"] / rate["no-cache"], 2),
        "gflops_per_step": {n: round(v / 1e9, 1) for n, v in flops.items()},
        "flop_limit_cache_over_peft": round(flops["peft"] / flops["cache"], 2),
        "flop_limit_cache_over_nocache": round(flops["no-cache"] / flops["cache"], 2),
        "cache_build_seconds": round(cache_seconds, 2),
        "cache_mib": round(cache_mib, 1), "cache_bound_mib": run_cfg.prefix_cache_max_mb,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if cuda:
        result["gpu"] = torch.cuda.get_device_name()
        result["peak_cuda_allocated_mib"] = {n: round(v, 1) for n, v in peak_cuda.items()}
    else:
        result["peak_rss_mib"] = round(rss_peak_mib(), 1)

    print(f"{'variant':<10} {'steps/s':>8} {'GFLOP/step':>11}")
    for name in variants:
        print(f"{name:<10} {rate[name]:>8.3f} {flops[name] / 1e9:>11.1f}")
    print(f"cache / peft     = {result['ratio_cache_over_peft']:.2f}x  (FLOP limit {result['flop_limit_cache_over_peft']:.2f}x)")
    print(f"cache / no-cache = {result['ratio_cache_over_nocache']:.2f}x  (FLOP limit {result['flop_limit_cache_over_nocache']:.2f}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
