"""`memlaw export RUN --out DIR`: a folder that answers like the run, loaded without memlaw.

* component ``lora``: ``DIR/`` is a merged Hugging Face checkpoint (the LoRA update added into
  the weights; ``AutoModelForCausalLM.from_pretrained(DIR)``), and ``DIR/peft/`` the adapter in
  PEFT's own format, for ``PeftModel.from_pretrained(base, DIR/peft)``.
* component ``mlp`` (the paper's unit, a rank-r map parallel to the MLP of a layer): no standard
  format holds it exactly. PEFT's LoRA adapts one linear module, whose input and output are its
  own, while this map reads the MLP's input and adds to the MLP's output, which no single
  linear of a Llama/Qwen MLP does (gate/up read that input but write the intermediate size; down
  writes that output but reads the intermediate activation). Merging it into the weights is not
  exact either, because the MLP is nonlinear. So ``DIR/`` holds the base model (``DIR/model/``),
  the unit's tensors (``DIR/memory.safetensors`` + ``memory.json``) and ``DIR/memlaw_memory.py``,
  a loader of a few lines that needs only torch, safetensors and transformers and reproduces
  memlaw's forward exactly: ``model, tokenizer = memlaw_memory.load(DIR)``.

Both get ``DIR/prompt.json`` (how memlaw builds the prompt) and a README.md with the snippet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import MemlawError
from .io import atomic_write_text, replace_folder, save_tensors
from .rundir import RunDir

LOADER = '''"""Load a memlaw export of the paper's memory unit (component mlp) without memlaw.

    import memlaw_memory
    model, tokenizer = memlaw_memory.load("DIR")

Layer k's MLP becomes mlp(x) + x @ A @ B (A: d x r, B: r x d, float32), exactly memlaw's unit in
evaluation mode (its dropout is for training only). A gated unit (memory.json "gate": true) adds
x @ A @ B only at the positions where x @ key > threshold (in float32), and nothing elsewhere.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


class ParallelMemory(torch.nn.Module):
    def __init__(self, mlp, A, B, key=None, threshold=None):
        super().__init__()
        self.mlp, self.A, self.B = mlp, torch.nn.Parameter(A, requires_grad=False), torch.nn.Parameter(B, requires_grad=False)
        self.key, self.threshold = key, threshold

    def forward(self, x):
        out = x.to(self.A.dtype) @ self.A @ self.B
        if self.key is not None:
            out = out * (x.float() @ self.key > self.threshold).unsqueeze(-1)
        return self.mlp(x) + out.to(x.dtype)


def load(folder, **kwargs):
    folder = Path(folder)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    spec, tensors = json.loads((folder / "memory.json").read_text()), load_file(folder / "memory.safetensors")
    layers = model.get_decoder().layers
    device = next(model.parameters()).device
    for k, names in zip(spec["layers"], spec["tensors"]):
        a, b, *gate = (tensors[n].to(device) for n in names)  # A, B[, key, threshold]
        layers[k].mlp = ParallelMemory(layers[k].mlp, a, b, *gate)
    return model.eval(), tokenizer
'''


def prompt_spec(session) -> dict:
    """How memlaw builds a prompt for this run (memlaw.data.encoding), for users of the export."""
    from .data.encoding import SYSTEM_PROMPT, supports_system_turn, uses_chat_template

    tok, cfg = session.loaded.tokenizer, session.cfg
    template = uses_chat_template(tok, cfg.chat_template)
    return {
        "chat_template": template,
        "system": SYSTEM_PROMPT if template and supports_system_turn(tok) else None,
        "enable_thinking": False,
        "drop_leading_bos": template,
        "note": "messages = [system turn if 'system' is set, {'role': 'user', 'content': query}]; text = "
                "apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=False); "
                "if text starts with the tokenizer's BOS token, drop it; ids = tokenizer(text); greedy decoding; the "
                "answer ends at the end-of-turn token. Without a chat template the prompt is the raw query.",
    }


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the export of the run (see the module docstring) to `out`, which must not exist; return it."""
    from .session import saved_session

    run, out = RunDir(run_dir), Path(out)
    if not run.path.is_dir():
        raise MemlawError(f"run folder {run.path} does not exist")
    if out.exists():
        raise MemlawError(f"--out {out} exists; export into a new folder")
    cfg = run.read_config()
    session = saved_session(run.path, cfg)
    work = out.parent / f".{out.name}.exporting"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        spec = prompt_spec(session)
        if cfg.component == "lora":
            _export_lora(session, run, work)
            usage = LORA_USAGE
        else:
            _export_mlp(session, work)
            usage = MLP_USAGE
        atomic_write_text(work / "prompt.json", json.dumps(spec, indent=2) + "\n")
        ask = ASK.replace("SYSTEM", str(spec["system"]))
        atomic_write_text(work / "README.md", usage.format(run=run.path, ask=ask))
        replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _export_lora(session, run: RunDir, work: Path) -> None:
    merged = session.adapter.model.merge_and_unload()  # W + (alpha/r)·B·A into every adapted linear
    merged.save_pretrained(work, safe_serialization=True)
    session.loaded.tokenizer.save_pretrained(work)
    peft = run.path / "peft"
    if peft.is_dir():
        shutil.copytree(peft, work / "peft")
        config_path = work / "peft" / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = session.loaded.source  # where this machine loaded the base from
        atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")


def _export_mlp(session, work: Path) -> None:
    from .model.memory_unit import detach_adapter

    tensors = session.adapter.state_dict()  # "...layers.<k>.mlp.memory.A" / ".B" (/ ".key" / ".threshold": gated)
    layers = sorted(session.cfg.layer)
    ends = (".A", ".B", ".key", ".threshold") if session.adapter.spec.gate else (".A", ".B")
    names = [tuple(next(n for n in tensors if f"layers.{k}." in n and n.endswith(end)) for end in ends) for k in layers]
    base = detach_adapter(session.adapter)
    base.save_pretrained(work / "model", safe_serialization=True)
    session.loaded.tokenizer.save_pretrained(work / "model")
    save_tensors(work / "memory.safetensors", {n: tensors[n].float().contiguous() for pair in names for n in pair},
                 metadata={"format": "memlaw-mlp-memory"})
    atomic_write_text(work / "memory.json", json.dumps({
        "component": "mlp", "rank": session.cfg.rank, "layers": layers, "tensors": names,
        "gate": session.adapter.spec.gate,
        "formula": "mlp_out = mlp(x) + x @ A @ B at each layer (x: the MLP's input)" + (
            "; gated: mlp_out = mlp(x) + [x @ key > threshold] * (x @ A @ B), the score in float32"
            if session.adapter.spec.gate else "")}, indent=2) + "\n")
    atomic_write_text(work / "memlaw_memory.py", LOADER)


ASK = """messages = [{"role": "system", "content": "SYSTEM"}, {"role": "user", "content": "YOUR QUERY"}]  # see prompt.json
text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=False)
if tokenizer.bos_token and text.startswith(tokenizer.bos_token):  # memlaw's prompt: the template's leading BOS
    text = text[len(tokenizer.bos_token):]                         # is dropped, the tokenizer adds its own if any
ids = tokenizer(text, return_tensors="pt").input_ids
out = model.generate(ids, do_sample=False, max_new_tokens=32)
print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
"""  # the usage snippets' common part: memlaw's prompt, greedy decoding (SYSTEM: prompt.json's system turn)

LORA_USAGE = """# memlaw export of {run} (LoRA, merged)

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")
tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
{ask}```

`peft/` holds the unmerged adapter: `PeftModel.from_pretrained(base_model, "THIS_FOLDER/peft")`.
"""

MLP_USAGE = """# memlaw export of {run} (the paper's memory unit, parallel to the MLP)

```python
import sys; sys.path.insert(0, "THIS_FOLDER")
import memlaw_memory

model, tokenizer = memlaw_memory.load("THIS_FOLDER")
{ask}```

`model/` is the unchanged base model; `memory.safetensors` holds A and B per layer (`memory.json`).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a run as a folder that loads without memlaw (merged HF checkpoint, or base + loader)",
                              description="lora: a merged Hugging Face checkpoint plus the PEFT adapter; mlp (the paper's "
                              "unit, which no standard format holds exactly): the base model, the unit's tensors and a "
                              "loader of a few lines that reproduces memlaw's forward exactly.")
    p.add_argument("run", help="run folder written by `memlaw train` or `memlaw memorize`")
    p.add_argument("--out", required=True, help="the export folder (must not exist)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    out = export_run(args.run, args.out)
    cfg = RunDir(args.run).read_config()
    kind = "a merged Hugging Face checkpoint and peft/" if cfg.component == "lora" else \
        "the base model, memory.safetensors and memlaw_memory.py (exact loader)"
    print(f"exported {args.run} ({cfg.component}, rank {cfg.rank}) to {out}: {kind}; usage in {out / 'README.md'}")
    return 0
