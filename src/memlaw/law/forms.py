"""The law's functional forms: what the fitter fits, `plan` inverts and the report draws.

Both forms have four parameters and share the power-law core h = C · r^α · ℓ^(−β):

    paper     ΔL = C · r^α · ℓ^(−β) + b            (the paper's law; unbounded in r)
    bounded   ΔL = L0 · h / (1 + h)                 (saturates at L0 as r grows or ℓ shrinks)

The bounded form is the logistic L0 · σ(ln C + α ln r − β ln ℓ): a straight power law
(ΔL ≈ L0·h) while little is stored, flattening at the ceiling L0 once everything is. A loss
reduction cannot exceed the initial loss, so a fitted L0 near the initial loss says the
ceiling is real. It has no offset b: at small h it predicts ΔL → 0, where the paper's form
keeps b (the answer format, learnt at any rank).

The fitter works in normalised coordinates: lr = ln(r / r0), ll = ln(ℓ / l0), with r0, l0 the
data's geometric means. There each form is linear in some parameters once the others are
fixed, which is what its `grid` exploits; `to_original` maps the result back.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# ρ(z) and its IRLS weight ρ'(z) of z = (res / f)², in scipy's convention (see fit.py).
RobustWeights = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
IRLS_STEPS = 10  # enough to rank grid points; the refinement does the exact solve
LOGIT_GRID = np.linspace(-6.0, 6.0, 13)  # bounded form: ln C (normalised) searched here (σ spans 0.0025 … 0.9975)
SCALE_IRLS_STEPS = 4  # bounded form: 13× more grid points, so fewer IRLS steps; the ranking of starts is what matters


class LawForm:
    """One functional form: its parameters, values and Jacobian (normalised), and its inverse in r."""

    name: str
    params: tuple[str, str, str, str]
    formula: str

    # ------------------------------------------------------------------ fitting (normalised coordinates)
    def value(self, p: np.ndarray, lr: np.ndarray, ll: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def jacobian(self, p: np.ndarray, lr: np.ndarray, ll: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def grid(self, lr, ll, y, robust: RobustWeights, f: float, a: np.ndarray, be: np.ndarray):
        """For each (α, β) grid point (flattened a, be): the best start (G × 4) and its summed robust cost (G,)."""
        raise NotImplementedError

    def to_original(self, p: np.ndarray, r0: float, l0: float) -> np.ndarray:
        """Normalised parameters -> (C, α, β, last) in the data's units."""
        c = self._scale(p[0])
        return np.array([c * r0 ** (-p[1]) * l0 ** p[2], p[1], p[2], p[3]])

    def _scale(self, first: float) -> float:
        return first

    # ------------------------------------------------------------------ using fitted parameters (original units)
    def predict(self, params: np.ndarray, rank: np.ndarray, length: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def collapse(self, params: np.ndarray, rank: np.ndarray, delta_loss: np.ndarray) -> np.ndarray:
        """What equals C·ℓ^(−β) under the law: every rank of a group falls on that one line (the report's view)."""
        raise NotImplementedError

    def target_problem(self, params: np.ndarray, delta_loss: float) -> str | None:
        """Why no minimum rank exists for this target (None when one does)."""
        C, alpha, beta = params[0], params[1], params[2]
        if C <= 0 or alpha <= 0:
            return f"the fitted law does not grow with rank (C={C:.4g}, alpha={alpha:.4g}): no rank reaches a target"
        if beta <= 0:
            return (f"the fitted law does not fall with length (beta={beta:.4g}), the Parametric Memory Law's shape: a "
                    "rank planned from it would shrink as the file grows; fit more cells in the law's regime or use "
                    "another form")
        return None

    def required_rank(self, params: np.ndarray, length: float, target: float) -> np.ndarray:
        """Per parameter set (k × 4): the rank where the law reaches target; 0 if every rank does, inf if none does."""
        C, alpha, beta = params[:, 0], params[:, 1], params[:, 2]
        h, every, never = self._core_target(params, target)
        grows = (C > 0) & (alpha > 0)
        with np.errstate(all="ignore"):
            rank = (h * length**beta / C) ** (1.0 / alpha)
        return np.where(~grows | never, np.inf, np.where(every, 0.0, rank))

    def _core_target(self, params: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The value of h = C·r^α·ℓ^(−β) that gives ΔL = target; masks: every rank reaches it, none does."""
        raise NotImplementedError


class PaperForm(LawForm):
    name = "paper"
    params = ("C", "alpha", "beta", "b")
    formula = "delta_loss = C * rank**alpha * length**(-beta) + b"

    def value(self, p, lr, ll):
        return p[0] * np.exp(p[1] * lr - p[2] * ll) + p[3]

    def jacobian(self, p, lr, ll):
        e = np.exp(p[1] * lr - p[2] * ll)
        return np.column_stack([e, p[0] * e * lr, -p[0] * e * ll, np.ones_like(e)])

    def grid(self, lr, ll, y, robust, f, a, be):
        # C and b are linear once (α, β) are fixed: solve them by IRLS at every grid point at once.
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.exp(a[:, None] * lr - be[:, None] * ll)  # (G, n)
            top = x.max(axis=1)
            c, b, cost = _robust_line(x / top[:, None], y, robust, f)
        return np.column_stack([c / top, a, be, b]), cost

    def predict(self, params, rank, length):
        C, alpha, beta, b = params
        return C * rank**alpha * length ** (-beta) + b

    def collapse(self, params, rank, delta_loss):
        return (delta_loss - params[3]) / rank ** params[1]

    def target_problem(self, params, delta_loss):
        problem = super().target_problem(params, delta_loss)
        if problem is None and delta_loss <= params[3]:
            return (f"target ΔL {delta_loss:g} is at or below the law's floor b={params[3]:.4g}: "
                    "the law predicts every rank reaches it, so it sets no minimum rank")
        return problem

    def _core_target(self, params, target):
        gap = target - params[:, 3]
        return gap, gap <= 0, np.zeros(len(params), dtype=bool)


class BoundedForm(LawForm):
    name = "bounded"
    params = ("C", "alpha", "beta", "L0")
    formula = "delta_loss = L0 * h / (1 + h),  h = C * rank**alpha * length**(-beta)"

    # normalised p = (ln C', α, β, L0): ΔL = L0 · σ(ln C' + α·lr − β·ll)
    def value(self, p, lr, ll):
        return p[3] * _sigmoid(p[0] + p[1] * lr - p[2] * ll)

    def jacobian(self, p, lr, ll):
        s = _sigmoid(p[0] + p[1] * lr - p[2] * ll)
        d = p[3] * s * (1.0 - s)
        return np.column_stack([d, d * lr, -d * ll, s])

    def grid(self, lr, ll, y, robust, f, a, be):
        # L0 is linear once (ln C', α, β) are fixed: search ln C' too and keep its best value per (α, β).
        z = a[:, None] * lr - be[:, None] * ll  # (G, n)
        costs, scales = [], []
        for u in LOGIT_GRID:
            L0, cost = _robust_scale(_sigmoid(z + u), y, robust, f)
            costs.append(cost)
            scales.append(L0)
        costs, scales = np.array(costs), np.array(scales)  # (U, G)
        best = np.argmin(costs, axis=0)
        cols = np.arange(len(a))
        return np.column_stack([LOGIT_GRID[best], a, be, scales[best, cols]]), costs[best, cols]

    def _scale(self, first):
        return float(np.exp(first))

    def predict(self, params, rank, length):
        C, alpha, beta, L0 = params
        h = C * rank**alpha * length ** (-beta)
        return L0 * h / (1.0 + h)

    def collapse(self, params, rank, delta_loss):
        with np.errstate(divide="ignore", invalid="ignore"):
            h = delta_loss / (params[3] - delta_loss)  # inverts ΔL = L0·h/(1+h); < 0 at or above the ceiling
        return h / rank ** params[1]

    def target_problem(self, params, delta_loss):
        problem = super().target_problem(params, delta_loss)
        if problem is None and delta_loss >= params[3]:
            return (f"target ΔL {delta_loss:g} is at or above the law's ceiling L0={params[3]:.4g}: "
                    "the bounded law predicts no rank reaches it")
        if problem is None and delta_loss <= 0:
            return f"target ΔL {delta_loss:g} is not positive: every rank reaches it, so it sets no minimum rank"
        return problem

    def _core_target(self, params, target):
        L0 = params[:, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            h = target / (L0 - target)
        return h, np.full(len(params), target <= 0), target >= L0


FORMS: dict[str, LawForm] = {f.name: f for f in (PaperForm(), BoundedForm())}
DEFAULT_FORM = "paper"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^−z), without overflow


def _robust_line(x: np.ndarray, y: np.ndarray, robust: RobustWeights, f: float):
    """For each row of x (G × n): robust fit y ≈ c·x + b by IRLS; returns c, b and the summed robust cost."""
    w = np.ones_like(x)
    for _ in range(IRLS_STEPS):
        s1, sx, sy = w.sum(1), (w * x).sum(1), w @ y
        sxx, sxy = (w * x * x).sum(1), (w * x) @ y
        det = sxx * s1 - sx**2
        ok = det > 1e-12 * sxx * s1  # x not constant under these weights
        safe = np.where(ok, det, 1.0)
        c = np.where(ok, (s1 * sxy - sx * sy) / safe, 0.0)
        b = np.where(ok, (sxx * sy - sx * sxy) / safe, sy / s1)
        rho, w = robust(((y - c[:, None] * x - b[:, None]) / f) ** 2)
    cost = 0.5 * f * f * rho.sum(1)
    return c, b, np.where(np.isfinite(cost), cost, np.inf)


def _robust_scale(x: np.ndarray, y: np.ndarray, robust: RobustWeights, f: float):
    """For each row of x (G × n): robust fit y ≈ a·x (no intercept) by IRLS; returns a and the summed robust cost."""
    w = np.ones_like(x)
    for _ in range(SCALE_IRLS_STEPS):
        sxx = (w * x * x).sum(1)
        a = np.where(sxx > 0, (w * x) @ y / np.where(sxx > 0, sxx, 1.0), 0.0)
        rho, w = robust(((y - a[:, None] * x) / f) ** 2)
    cost = 0.5 * f * f * rho.sum(1)
    return a, np.where(np.isfinite(cost), cost, np.inf)
