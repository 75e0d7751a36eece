"""Locality-preserving memorization: keep the unit quiet on inputs that are not its records.

The paper's unit adds x·A·B to the MLP's output at every position of every input, and nothing in
its objective says "leave other inputs alone", so a memory of a few facts also moves the answers
to unrelated prompts (README, "Remember your own facts"). Four means keep it quieter, each
measured on *replayed* inputs: the unit's input (the MLP input of its layer, base model) on
general text and everyday prompts with the base model's own answers
(memlaw/data/replay_text.txt, replay_prompts.txt), which memlaw's locality measures never see
(they use general_text.txt and unrelated_prompts.txt, or the user's --locality-data).

* ``preserve_weight`` λ, a penalty: every optimizer step adds
  λ · mean_t ‖x_t·A·B‖² / mean_t ‖mlp(x_t)‖² over the replayed positions t, the unit's output
  there relative to the MLP's own. With M = XᵀX/n it is λ·Σ (AᵀMA) ⊙ (BBᵀ) / c, so a step costs
  O(d²r), nothing per replayed token.
* ``preserve_kl`` κ, a replay term (the usual means in knowledge editing): every step adds
  κ · KL(base ‖ adapted) over the base model's own greedy answers to a few replayed prompts
  (:class:`ReplayKL`), which costs a forward and backward of those prompts per step.
* ``preserve_gate`` g, a gate (a side memory that fires only on its own keys, as GRACE's and WISE's
  do, here inside the unit): the read z = x·A passes each component only by what it exceeds its
  threshold τ_j = g · max_t |x_t·A_j| over the replayed positions, recomputed after every step
  (memlaw.model.memory_unit.gate_read; training keeps the hard value but takes a smooth gradient,
  so that records below τ still get one). With g ≥ 1 every replayed input gets exactly no output, and so does any
  input whose reads stay within theirs.
* ``preserve_energy`` e, a constraint (AlphaEdit's null-space idea on the unit's input map):
  P = I − UUᵀ with U the eigenvectors of M that carry the share e of its trace, and A ← P·A at
  the start and after every optimizer step. The unit then cannot read the directions the
  replayed inputs use most; it stores its records in the rest.

The penalty and the projection leave the unit's format as it is (A and B): the projection is applied
to A itself, and the penalty only shapes training. The gate adds one tensor per unit, its thresholds
(adapter.json says ``gate: true``; the export's loader applies them). All are off (0) by default, in
`memlaw train` (the paper's objective) and, until they are measured beyond one file, in `memlaw memorize`
(docs/benchmarks.md, "Locality").
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
KL_PROMPTS_PER_STEP = 4  # replayed prompts whose answers the KL term compares, each step
GATE_ROUNDING = 1e-4  # thresholds sit this much above g·max|x·A|: the same read batched or alone may differ in its last bits


def replay_text() -> str:
    return resources.files("memlaw.data").joinpath("replay_text.txt").read_text(encoding="utf-8")


def replay_prompts() -> list[str]:
    text = resources.files("memlaw.data").joinpath("replay_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Replayed:
    """What one unit saw on the replayed inputs: the inputs, their second moment and the MLP's output scale."""

    inputs: torch.Tensor  # (n, d) X, float32
    moment: torch.Tensor  # (d, d) M = XᵀX / n, float32
    mlp_energy: float  # mean_t ‖mlp(x_t)‖²


def replay_sequences(session, answered: list[tuple[list[int], list[int]]] | None = None) -> list[list[int]]:
    """Token ids of the replayed inputs: windows of the replay text, and each replay prompt (the run's
    prompt construction) followed by the base model's greedy answer (`answered`: replay_answers' result,
    when the caller has it already)."""
    ids = session.loaded.tokenizer(replay_text())["input_ids"]
    windows = [ids[i : i + REPLAY_WINDOW] for i in range(0, len(ids), REPLAY_WINDOW) if len(ids[i : i + REPLAY_WINDOW]) > 1]
    return windows + [p + a for p, a in (replay_answers(session) if answered is None else answered)]


def replay_answers(session) -> list[tuple[list[int], list[int]]]:
    """(prompt, the base model's greedy answer) token ids for every replay prompt."""
    tok, cfg = session.loaded.tokenizer, session.cfg
    suffix = suffix_ids(tok, cfg.chat_template)
    stop = suffix[0] if suffix else tok.eos_token_id
    prompts = [prompt_ids(tok, p, cfg.chat_template) for p in replay_prompts()]
    with session.adapter.disabled():
        answers = greedy_generate(session.adapter.model, prompts, [REPLAY_ANSWER_TOKENS] * len(prompts), session.pad_id,
                                  cfg.eval_batch_size, session.loaded.device, stop=stop)
    return [(p, a) for p, (a, _) in zip(prompts, answers)]


def collect_replayed(session, answered: list[tuple[list[int], list[int]]] | None = None) -> dict[str, Replayed]:
    """Per unit (its module name): the replayed inputs' statistics, from the base model (the unit disabled)."""
    units = {name: m for name, m in session.adapter.model.named_modules() if isinstance(m, MemoryMLP)}
    seen: dict[str, list] = {name: [[], 0.0] for name in units}

    def hook(name):
        def record(module, inputs, output):
            seen[name][0].append(inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float())  # (positions, d)
            seen[name][1] += float(output.detach().double().pow(2).sum())
        return record

    sequences = replay_sequences(session, answered)  # before the hooks: generating the answers is not a replayed input
    handles = [m.mlp.register_forward_hook(hook(name)) for name, m in units.items()]
    try:
        session.adapter.set_training(False)
        with torch.no_grad(), session.adapter.disabled():
            for seq in sequences:
                session.adapter.model(input_ids=torch.tensor([seq], device=session.loaded.device))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (chunks, energy) in seen.items():
        x = torch.cat(chunks)  # (n, d)
        out[name] = Replayed(x, (x.double().T @ x.double() / len(x)).float(), energy / len(x))
    return out


def protected_basis(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """U (d, k): the fewest eigenvectors of `moment` whose eigenvalues sum to at least `energy` of its trace."""
    values, vectors = torch.linalg.eigh(moment.double())  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    share = torch.cumsum(values, 0) / values.sum()
    k = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1
    return vectors[:, : min(k, len(values))].float()


class ReplayKL:
    """KL(base ‖ adapted) on the base model's own greedy answers to the replayed prompts: what "unrelated prompts
    answered the same" counts, as a loss. Each step draws `per_step` prompts with its own seeded generator and
    runs them with the unit off (no gradient) and on; the base side is recomputed rather than stored, which
    keeps memory flat for large vocabularies and gives exactly 0 while the unit is zero."""

    def __init__(self, session, answered: list[tuple[list[int], list[int]]] | None = None,
                 per_step: int = KL_PROMPTS_PER_STEP):
        self.adapter, self.device, self.per_step = session.adapter, session.loaded.device, per_step
        self.pairs = replay_answers(session) if answered is None else answered
        self.generator = torch.Generator().manual_seed(session.cfg.seed)

    def _log_probs(self, prompt: list[int], answer: list[int]) -> torch.Tensor:
        logits = self.adapter.model(input_ids=torch.tensor([prompt + answer], device=self.device)).logits[0]  # (T, V)
        return torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1)  # (answer tokens, V): the answer's positions

    def loss(self) -> torch.Tensor:
        picked = torch.randperm(len(self.pairs), generator=self.generator)[: self.per_step].tolist()
        total, count = 0.0, 0
        for i in picked:
            with torch.no_grad(), self.adapter.disabled():
                base = self._log_probs(*self.pairs[i])
            adapted = self._log_probs(*self.pairs[i])
            total = total + (base.exp() * (base - adapted)).sum()
            count += base.shape[0]
        return total / max(count, 1)


def output_penalty(A: torch.Tensor, B: torch.Tensor, moment: torch.Tensor, mlp_energy: float) -> torch.Tensor:
    """mean_t ‖x_t·A·B‖² / mean_t ‖mlp(x_t)‖², from M = mean_t x_tᵀx_t: Σ (AᵀMA) ⊙ (BBᵀ) / c."""
    return ((A.T @ moment @ A) * (B @ B.T)).sum() / mlp_energy  # (r, r) ⊙ (r, r)


class Preserver:
    """The locality means of one training run: `loss()` before clipping, `constrain()` after every update."""

    def __init__(self, session, weight: float = 0.0, energy: float = 0.0, gate: float = 0.0, kl: float = 0.0):
        self.weight, self.energy, self.gate, self.kl_weight = weight, energy, gate, kl
        answered = replay_answers(session)  # generated once, for the replay KL and the replayed inputs alike
        self.kl = ReplayKL(session, answered) if kl else None
        replayed = collect_replayed(session, answered)
        self.units = {name: m.memory for name, m in session.adapter.model.named_modules() if isinstance(m, MemoryMLP)}
        device = next(iter(self.units.values())).A.device
        self.moments = {n: r.moment.to(device) for n, r in replayed.items()}
        self.scales = {n: r.mlp_energy for n, r in replayed.items()}
        self.bases = {n: protected_basis(r.moment, energy).to(device) for n, r in replayed.items()} if energy else {}
        self.inputs = {n: r.inputs.to(device) for n, r in replayed.items()} if gate else {}
        self.constrain()

    @classmethod
    def for_session(cls, session) -> Preserver | None:
        cfg = session.cfg
        if not (cfg.preserve_weight or cfg.preserve_energy or cfg.preserve_gate or cfg.preserve_kl):
            return None
        return cls(session, cfg.preserve_weight, cfg.preserve_energy, cfg.preserve_gate, cfg.preserve_kl)

    def loss(self) -> torch.Tensor | None:
        terms = []
        if self.weight:
            terms.append(self.weight * sum(output_penalty(u.A, u.B, self.moments[n], self.scales[n]) for n, u in self.units.items()))
        if self.kl is not None:
            terms.append(self.kl_weight * self.kl.loss())
        return sum(terms) if terms else None

    @torch.no_grad()
    def constrain(self) -> None:
        """After an update: project A (preserve_energy), then set each gate's thresholds from the new A."""
        for name, basis in self.bases.items():
            A = self.units[name].A
            A -= basis @ (basis.T @ A)  # A <- (I - UUᵀ)·A: (d, k) @ (k, r)
        for name, x in self.inputs.items():
            unit = self.units[name]
            reads = (x @ unit.A).abs().amax(0)  # (n, d) @ (d, r) -> (r,)
            unit.threshold.copy_(self.gate * reads * (1 + GATE_ROUNDING))
