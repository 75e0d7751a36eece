"""Locality-preserving memorization: keep the unit quiet on inputs that are not its records.

The paper's unit adds x·A·B to the MLP's output at every position of every input, and nothing in
its objective says "leave other inputs alone", so a memory of a few facts also moves the answers
to unrelated prompts (README, "Remember your own facts"). Two means act on what the unit reads,
both measured on *replayed* inputs: the unit's input (the MLP input of its layer, base model) on
general text and everyday prompts with the base model's own answers
(memlaw/data/replay_text.txt, replay_prompts.txt), which memlaw's locality measures never see
(they use general_text.txt and unrelated_prompts.txt, or the user's --locality-data).

* ``preserve_weight`` λ, a penalty: every optimizer step adds
  λ · mean_t ‖x_t·A·B‖² / mean_t ‖mlp(x_t)‖² over the replayed positions t, the unit's output
  there relative to the MLP's own. With M = XᵀX/n it is λ·Σ (AᵀMA) ⊙ (BBᵀ) / c, so a step costs
  O(d²r), nothing per replayed token.
* ``preserve_energy`` e, a constraint (AlphaEdit's null-space idea on the unit's input map):
  P = I − UUᵀ with U the eigenvectors of M that carry the share e of its trace, and A ← P·A at
  the start and after every optimizer step. The unit then cannot read the directions the
  replayed inputs use most; it stores its records in the rest.

Both leave the unit's format as it is (A and B, the export's loader unchanged): the projection is
applied to A itself, and the penalty only shapes training. Off (0) by default in
`memlaw train` (the paper's objective); `memlaw memorize` turns them on (memlaw.memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch

from ..data.encoding import prompt_ids, suffix_ids
from ..evaluate.recall import greedy_generate
from ..model.memory_unit import MemoryMLP

REPLAY_WINDOW = 256  # tokens of replay text per forward pass
REPLAY_ANSWER_TOKENS = 16  # the base model's greedy answer to each replay prompt, also replayed


def replay_text() -> str:
    return resources.files("memlaw.data").joinpath("replay_text.txt").read_text(encoding="utf-8")


def replay_prompts() -> list[str]:
    text = resources.files("memlaw.data").joinpath("replay_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Replayed:
    """What one unit saw on the replayed inputs: the second moment of its input and the MLP's output scale."""

    moment: torch.Tensor  # (d, d) M = XᵀX / n, float32
    mlp_energy: float  # mean_t ‖mlp(x_t)‖²
    positions: int


def replay_sequences(session) -> list[list[int]]:
    """Token ids of the replayed inputs: windows of the replay text, and each replay prompt (the run's
    prompt construction) followed by the base model's greedy answer."""
    tok, cfg = session.loaded.tokenizer, session.cfg
    ids = tok(replay_text())["input_ids"]
    windows = [ids[i : i + REPLAY_WINDOW] for i in range(0, len(ids), REPLAY_WINDOW) if len(ids[i : i + REPLAY_WINDOW]) > 1]
    suffix = suffix_ids(tok, cfg.chat_template)
    stop = suffix[0] if suffix else tok.eos_token_id
    prompts = [prompt_ids(tok, p, cfg.chat_template) for p in replay_prompts()]
    with session.adapter.disabled():
        answers = greedy_generate(session.adapter.model, prompts, [REPLAY_ANSWER_TOKENS] * len(prompts), session.pad_id,
                                  cfg.eval_batch_size, session.loaded.device, stop=stop)
    return windows + [p + a for p, (a, _) in zip(prompts, answers)]


def collect_replayed(session) -> dict[str, Replayed]:
    """Per unit (its module name): the replayed inputs' statistics, from the base model (the unit disabled)."""
    units = {name: m for name, m in session.adapter.model.named_modules() if isinstance(m, MemoryMLP)}
    sums = {name: [torch.zeros(m.memory.A.shape[0], m.memory.A.shape[0], dtype=torch.float64), 0.0, 0]
            for name, m in units.items()}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double().cpu()  # (positions, d)
            y = output.detach().reshape(-1, output.shape[-1]).double().cpu()
            acc = sums[name]
            acc[0] += x.T @ x
            acc[1] += float((y * y).sum())
            acc[2] += x.shape[0]
        return record

    handles = [m.mlp.register_forward_hook(hook(name)) for name, m in units.items()]
    try:
        session.adapter.set_training(False)
        with torch.no_grad(), session.adapter.disabled():
            for seq in replay_sequences(session):
                session.adapter.model(input_ids=torch.tensor([seq], device=session.loaded.device))
    finally:
        for h in handles:
            h.remove()
    return {name: Replayed((m / n).float(), e / n, n) for name, (m, e, n) in sums.items()}


def protected_basis(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """U (d, k): the fewest eigenvectors of `moment` whose eigenvalues sum to at least `energy` of its trace."""
    values, vectors = torch.linalg.eigh(moment.double())  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    share = torch.cumsum(values, 0) / values.sum()
    k = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    return vectors[:, : min(k, len(values))].float()


def output_penalty(A: torch.Tensor, B: torch.Tensor, moment: torch.Tensor, mlp_energy: float) -> torch.Tensor:
    """mean_t ‖x_t·A·B‖² / mean_t ‖mlp(x_t)‖², from M = mean_t x_tᵀx_t: Σ (AᵀMA) ⊙ (BBᵀ) / c."""
    return ((A.T @ moment @ A) * (B @ B.T)).sum() / mlp_energy  # (r, r) ⊙ (r, r)


class Preserver:
    """The two means for one training run: `loss()` before clipping, `constrain()` after every update."""

    def __init__(self, session, weight: float, energy: float):
        self.weight, self.energy = weight, energy
        replayed = collect_replayed(session)
        self.units = {name: m.memory for name, m in session.adapter.model.named_modules() if isinstance(m, MemoryMLP)}
        device = next(iter(self.units.values())).A.device
        self.moments = {n: r.moment.to(device) for n, r in replayed.items()}
        self.scales = {n: r.mlp_energy for n, r in replayed.items()}
        self.bases = {n: protected_basis(r.moment, energy).to(device) for n, r in replayed.items()} if energy else {}
        self.positions = next(iter(replayed.values())).positions
        self.constrain()

    @classmethod
    def for_session(cls, session) -> Preserver | None:
        cfg = session.cfg
        return cls(session, cfg.preserve_weight, cfg.preserve_energy) if (cfg.preserve_weight or cfg.preserve_energy) else None

    def loss(self) -> torch.Tensor | None:
        if not self.weight:
            return None
        return self.weight * sum(output_penalty(u.A, u.B, self.moments[n], self.scales[n]) for n, u in self.units.items())

    @torch.no_grad()
    def constrain(self) -> None:
        for name, basis in self.bases.items():
            A = self.units[name].A
            A -= basis @ (basis.T @ A)  # A <- (I - UUᵀ)·A: (d, k) @ (k, r)

    def protected_dims(self) -> dict[str, int]:
        return {n: int(b.shape[1]) for n, b in self.bases.items()}
