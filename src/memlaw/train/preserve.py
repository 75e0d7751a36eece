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
  do, here one linear key per unit): the unit writes only at positions where x·key > τ
  (memlaw.model.memory_unit.gate_mask). The unit's input does not depend on the unit (it is the
  MLP's input at the unit's own layer), so the positions that predict the records' target tokens
  are known before training: :func:`fit_gate` fits the key by logistic regression, those positions
  against the replayed ones, and puts τ at the share g of the gap between the highest replayed
  score and the lowest record's. Training and evaluation then see a fixed mask; every input scored
  below τ, the replayed ones included, gets exactly no output.
* ``preserve_energy`` e, a constraint (AlphaEdit's null-space idea on the unit's input map):
  P = I − UUᵀ with U the eigenvectors of M that carry the share e of its trace, and A ← P·A at
  the start and after every optimizer step. The unit then cannot read the directions the
  replayed inputs use most; it stores its records in the rest.

The penalty and the projection leave the unit's format as it is (A and B): the projection is applied
to A itself, and the penalty only shapes training. The gate adds two tensors per unit, its key (d,)
and threshold (1,) (adapter.json says ``gate: true``; the export's loader applies them). All are off (0) by
default in `memlaw train` (the paper's objective); `memlaw memorize` gates its unit at 0.5
(config.MEMORIZE_DEFAULTS; measured in docs/benchmarks.md, "Locality").
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch

from ..data.encoding import Encoded, prompt_ids, suffix_ids
from ..evaluate.recall import greedy_generate

REPLAY_WINDOW = 256  # tokens of replay text per forward pass
REPLAY_ANSWER_TOKENS = 16  # the base model's greedy answer to each replay prompt, also replayed
KL_PROMPTS_PER_STEP = 4  # replayed prompts whose answers the KL term compares, each step
GATE_L2 = 1e-3  # the key's logistic regression: L2 weight on the standardized key


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


def unit_inputs(session, sequences: list[list[int]]) -> dict[str, list[torch.Tensor]]:
    """Per unit (its module name): its input (T, d) float32 on each of `sequences`, from the base model (units off)."""
    units = session.adapter.hosts
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in units}

    def hook(name):
        def record(module, inputs, output):
            seen[name].append(inputs[0].detach()[0].float())  # (T, d): one sequence per forward
        return record

    handles = [m.mlp.register_forward_hook(hook(name)) for name, m in units.items()]
    try:
        session.adapter.set_training(False)
        with torch.no_grad(), session.adapter.disabled():
            for seq in sequences:
                session.adapter.model(input_ids=torch.tensor([seq], device=session.loaded.device))
    finally:
        for h in handles:
            h.remove()
    return seen


def collect_replayed(session, answered: list[tuple[list[int], list[int]]] | None = None) -> dict[str, Replayed]:
    """Per unit (its module name): the replayed inputs' statistics, from the base model (the unit disabled)."""
    sequences = replay_sequences(session, answered)  # before the hooks: generating the answers is not a replayed input
    units = session.adapter.hosts
    out = {}
    for name, chunks in unit_inputs(session, sequences).items():
        x = torch.cat(chunks)  # (n, d)
        with torch.no_grad(), session.adapter.disabled():
            mlp = units[name].mlp  # position-wise: the concatenated inputs give each position's output
            energy = float(mlp(x.to(next(mlp.parameters()).dtype)).double().pow(2).sum())
        out[name] = Replayed(x, (x.double().T @ x.double() / len(x)).float(), energy / len(x))
    return out


def record_inputs(session, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
    """Per unit: its inputs (m, d) at the positions that predict the records' target tokens, suffix included."""
    seen = unit_inputs(session, [e.prompt_ids + e.target_ids for e in encoded])
    # position t predicts token t + 1: the prompt's last position through the target's second to last
    return {name: torch.cat([x[len(e.prompt_ids) - 1 : len(e.prompt_ids) + len(e.target_ids) - 1]
                             for x, e in zip(chunks, encoded)]) for name, chunks in seen.items()}


@dataclass
class Gate:
    key: torch.Tensor  # (d,)
    threshold: float
    margin: float  # (lowest record score − highest replayed score) / the records' score spread; < 0: not separated
    leaks: int  # replayed positions at or above the threshold (0 when separated)


def fit_gate(records: torch.Tensor, replayed: torch.Tensor, place: float) -> Gate:
    """A linear key telling the records' positions (m, d) from the replayed ones (n, d): L2-regularized
    logistic regression on inputs standardized by the replayed ones, classes weighted equally (torch's
    L-BFGS in float64, deterministic; a dozen lines rather than a scikit-learn dependency for one fit).
    The threshold sits at `place` ∈ (0, 1) of the gap between the highest replayed score and the lowest
    record's; with no gap, `place` times the records' score spread below the lowest record's (every record
    fires, with room to spare, and `leaks` counts the replayed positions that do too)."""
    pos, neg = records.double(), replayed.double()
    mu, sd = neg.mean(0), neg.std(0).clamp_min(1e-6)
    x = (torch.cat([pos, neg]) - mu) / sd  # (m + n, d)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    weight = torch.where(y > 0, len(neg) / len(pos), 1.0)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, weight) + GATE_L2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    key = w.detach() / sd  # raw scores x·key = standardized logit − b + mu·key: the same order
    score_pos, score_neg = pos @ key, neg @ key
    low, high = float(score_pos.min()), float(score_neg.max())
    spread = float(score_pos.max() - score_pos.min()) or 1.0
    # no gap: every record must still fire, with room for the noise of another dtype or batch (a threshold just
    # under the lowest record's score lost records when a bf16-trained unit was evaluated in float32)
    threshold = high + place * (low - high) if low > high else low - place * spread
    return Gate(key.float(), threshold, (low - high) / spread, int((score_neg > threshold).sum()))


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

    def __init__(self, session, encoded: list[Encoded], weight: float = 0.0, energy: float = 0.0, gate: float = 0.0,
                 kl: float = 0.0):
        self.weight, self.energy, self.gate, self.kl_weight = weight, energy, gate, kl
        answered = replay_answers(session)  # generated once, for the replay KL and the replayed inputs alike
        self.kl = ReplayKL(session, answered) if kl else None
        replayed = collect_replayed(session, answered)
        self.units = session.adapter.units
        device = next(iter(self.units.values())).A.device
        self.moments = {n: r.moment.to(device) for n, r in replayed.items()}
        self.scales = {n: r.mlp_energy for n, r in replayed.items()}
        self.bases = {n: protected_basis(r.moment, energy).to(device) for n, r in replayed.items()} if energy else {}
        self.gates: dict[str, Gate] = {}
        if gate:  # one unit: TrainConfig.validate checks the resolved layers (session.resolve)
            for name, x in record_inputs(session, encoded).items():
                self.gates[name] = fit_gate(x, replayed[name].inputs, gate)
                self.units[name].key.copy_(self.gates[name].key)
                self.units[name].threshold.fill_(self.gates[name].threshold)
        self.constrain()

    @classmethod
    def for_session(cls, session, encoded: list[Encoded]) -> Preserver | None:
        cfg = session.cfg
        if not (cfg.preserve_weight or cfg.preserve_energy or cfg.preserve_gate or cfg.preserve_kl):
            return None
        return cls(session, encoded, cfg.preserve_weight, cfg.preserve_energy, cfg.preserve_gate, cfg.preserve_kl)

    def summary(self) -> dict:
        """For the run's state.json: how well each gate told the records from the replayed inputs."""
        if not self.gates:
            return {}
        return {"gate_margin": round(min(g.margin for g in self.gates.values()), 4),
                "gate_leaks": sum(g.leaks for g in self.gates.values())}

    def loss(self) -> torch.Tensor | None:
        terms = []
        if self.weight:
            terms.append(self.weight * sum(output_penalty(u.A, u.B, self.moments[n], self.scales[n]) for n, u in self.units.items()))
        if self.kl is not None:
            terms.append(self.kl_weight * self.kl.loss())
        return sum(terms) if terms else None

    @torch.no_grad()
    def constrain(self) -> None:
        """After an update: project A (preserve_energy)."""
        for name, basis in self.bases.items():
            A = self.units[name].A
            A -= basis @ (basis.T @ A)  # A <- (I - UUᵀ)·A: (d, k) @ (k, r)
