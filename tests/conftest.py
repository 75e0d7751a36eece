"""Shared fixtures: tiny randomly initialized Llama/Qwen models with a byte-level tokenizer.

They are saved as ordinary Hugging Face model folders, so the whole pipeline (loading by
path, CLI, adapters) runs on them in seconds without the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# --dtype auto on the CPU depends on the machine (a cached bf16 micro-benchmark, memlaw.model.loading);
# the suite pins it to float32 so its results do not. MEMLAW_CPU_BF16=1 runs the suite in bfloat16.
os.environ.setdefault("MEMLAW_CPU_BF16", "0")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN = 64  # tiny, yet wide enough that the final norm + head can give a token p > 0.5
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]



@pytest.fixture(autouse=True)
def _dtype_line_already_said():
    """--dtype auto says its choice once per process; the suite's pinned choice counts as said, so whichever test
    loads a model first does not see that line on stderr (tests of the one-line error contract, run alone)."""
    from memlaw.model import loading

    dtype, reason = loading.choose_dtype("auto", torch.device("cpu"))
    loading._said.add((str(dtype).replace("torch.", ""), reason))

def make_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer with no merges: one token per byte, plus chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(kind: str = "llama", vocab_size: int = 261, layers: int = 3, seed: int = 0):
    """kind: llama | qwen2 | qwen2-sliding | qwen3 | mistral (sliding window 6) | gemma (no prefix-cache support)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,  # large enough that a confident (p > 0.5) prediction is reachable
    )
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common)).eval()
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common)).eval()
    if kind == "qwen2-sliding":  # layers >= 1 use a 6-token sliding window
        config = tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=6, max_window_layers=1)
        return tf.Qwen2ForCausalLM(config).eval()
    if kind == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, head_dim=HIDDEN // 4)).eval()
    if kind == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=6)).eval()
    if kind == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(**common, head_dim=HIDDEN // 4)).eval()
    raise ValueError(kind)


def save_tiny(folder: Path, kind: str = "llama", chat_template: bool = True) -> Path:
    """A tiny model folder usable as `model=<path>`."""
    tok = make_tokenizer(chat_template)
    model = make_model(kind, vocab_size=len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama-style model folder (3 layers, hidden 64) with a chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-qwen"), "qwen2")


@pytest.fixture(scope="session")
def tiny_raw_dir(tmp_path_factory) -> Path:
    """A tiny Llama-style model whose tokenizer has no chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny-raw"), "llama", chat_template=False)


def write_records(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_records(tmp_path) -> Path:
    rows = [
        {"id": 1, "query": "Ann Lee:", "target": "4821"},
        {"id": 2, "query": "Bob Ray:", "target": "90"},
        {"id": 3, "query": "Cy Wu:", "target": "377"},
        {"id": 4, "query": "Di Fox:", "target": "15"},
    ]
    return write_records(tmp_path / "records.jsonl", rows)


REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference-data"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA
