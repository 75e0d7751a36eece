"""Robust fit of the Parametric Memory Law, in either of its forms (memlaw.law.forms), with bootstrap CIs.

    paper     ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b
    bounded   ΔL(r, ℓ) = L0 · h / (1 + h),  h = C · r^α · ℓ^(−β)

Method (the same for both forms):

1. grid search over the exponents (α, β); at each grid point the parameters that enter
   linearly (paper: C and b; bounded: L0, with ln C searched on a grid too) come from
   iteratively reweighted least squares (IRLS) on the robust loss, all grid points at once;
2. the grid's best local minima start a joint refinement of all four parameters with
   ``scipy.optimize.least_squares`` (same robust loss and scale);
3. the objective is the *summed* robust loss ½·Σ f²·ρ((res/f)²) in scipy's convention, not
   the mean: same minimizer, but no stopping tolerance is met early on an n-times smaller loss;
4. confidence intervals: resample rows (runs) with replacement, refit with the same
   procedure and scale, take percentile intervals.

Rank and length are divided by their geometric means inside the fit for conditioning; the
reported C is in the original units. AIC and BIC use the Gaussian likelihood of the
residuals (n·ln(RSS/n) + 2k, + k·ln n), so the two forms (k = 4 each) compare on equal terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import MemlawError
from .forms import DEFAULT_FORM, FORMS, LawForm

PARAMS = FORMS[DEFAULT_FORM].params  # the paper's form: C, alpha, beta, b
LOSSES = ("soft_l1", "huber", "cauchy", "linear")
DEFAULT_EXPONENT_GRID = tuple(float(v) for v in np.linspace(-1.0, 3.0, 21))
RELATIVE_F_SCALE = 0.05  # default robust scale: 5% of the median |ΔL| of the data
MAX_STARTS = 3  # grid local minima refined per fit, at most (a bootstrap refit refines only the best one) ...
START_TOLERANCE = 0.1  # ... and only those within 10% of the best grid cost (a worse one sits in a worse basin)
MAX_DRAWS_PER_SAMPLE = 100  # bootstrap redraws a degenerate resample at most this often on average
TIE_TOLERANCE = 1e-9  # grid points whose costs differ by less (relative) are tied: a flat valley, not a minimum


@dataclass(frozen=True)
class RankPlan:
    """The smallest rank the law predicts reaches ΔL ≥ ``delta_loss`` at ``length``."""

    length: float
    delta_loss: float
    rank: float  # real-valued rank at which the law's prediction equals the target
    power_of_two: int  # the smallest power of two ≥ rank (at least 1): the rank to train
    interval: tuple[float, float] | None  # bootstrap percentile interval of rank; inf: some fits never reach it
    confidence: float


def next_power_of_two(rank: float) -> int:
    """The smallest power of two ≥ rank, at least 1."""
    return 1 if rank <= 1 else 2 ** math.ceil(math.log2(rank))


class ParametricMemoryLaw:
    """Estimator of ΔL(r, ℓ) in one of the law's forms (scikit-learn style).

    Parameters (stored unchanged):
        form: "paper" (default; C · r^α · ℓ^(−β) + b) or "bounded" (L0 · h/(1+h), h = C · r^α · ℓ^(−β)).
        loss: robust loss, one of "soft_l1" (default), "huber", "cauchy", "linear" (plain least squares).
        f_scale: residual scale where the robust loss turns from quadratic to robust, in nats.
            None (default): 5% of the median |ΔL| of the fitted data, so the fit does not depend
            on the units and a point off by much more than the typical seed-to-seed spread
            stops pulling quadratically. The bootstrap reuses the full data's scale.
        alpha_grid, beta_grid: exponent values searched before refinement
            (None: -1 … 3 in steps of 0.2; the refinement may leave the grid).
        n_bootstrap: bootstrap refits for the confidence intervals (0: none).
        confidence: level of the percentile intervals.
        random_state: seed of the bootstrap resampling.

    Fitted attributes: one per parameter of the form (C_, alpha_, beta_ and b_ or L0_), params_,
    r2_, mape_ (percent, over points with ΔL ≠ 0), aic_, bic_, n_, f_scale_, ci_ ({param: (lo, hi)}),
    bootstrap_params_ (n_bootstrap × 4, in the form's parameter order), residuals_ (ΔL − prediction
    on the fitted data; not restored by from_dict).
    """

    def __init__(
        self,
        *,
        form: str = DEFAULT_FORM,
        loss: str = "soft_l1",
        f_scale: float | None = None,
        alpha_grid: Sequence[float] | None = None,
        beta_grid: Sequence[float] | None = None,
        n_bootstrap: int = 200,
        confidence: float = 0.95,
        random_state: int | None = 0,
    ) -> None:
        self.form = form
        self.loss = loss
        self.f_scale = f_scale
        self.alpha_grid = alpha_grid
        self.beta_grid = beta_grid
        self.n_bootstrap = n_bootstrap
        self.confidence = confidence
        self.random_state = random_state

    @property
    def form_(self) -> LawForm:
        return FORMS[self.form]

    # ------------------------------------------------------------------ fitting
    def fit(self, rank: ArrayLike, length: ArrayLike, delta_loss: ArrayLike) -> ParametricMemoryLaw:
        """Fit the form's four parameters to runs (one point each: rank, answer-token length, ΔL), then bootstrap."""
        self._check_params()
        r, ell, y = _check_points(rank, length, delta_loss)
        problem = data_problem(r, ell, y)
        if problem:
            raise MemlawError(f"cannot fit the memory law: {problem}")
        abs_y = np.abs(y)
        f = float(self.f_scale) if self.f_scale is not None else RELATIVE_F_SCALE * float(np.median(abs_y) or abs_y.max())
        grids = (
            np.asarray(DEFAULT_EXPONENT_GRID if self.alpha_grid is None else self.alpha_grid, dtype=float),
            np.asarray(DEFAULT_EXPONENT_GRID if self.beta_grid is None else self.beta_grid, dtype=float),
        )
        self._set_params(_fit_points(self.form_, r, ell, y, self.loss, f, *grids))
        self.n_ = int(len(y))
        self.f_scale_ = f
        self.residuals_ = y - self.predict(r, ell)
        self.r2_ = r2_score(y, y - self.residuals_)
        self.mape_ = mape(y, y - self.residuals_)
        self.aic_, self.bic_ = information_criteria(self.residuals_, len(self.form_.params))
        self.bootstrap_params_ = self._bootstrap(r, ell, y, f, grids)
        self.ci_ = self._intervals()
        return self

    def _set_params(self, values: Sequence[float]) -> None:
        for name, v in zip(self.form_.params, values):
            setattr(self, f"{name}_", float(v))

    def _bootstrap(self, r: np.ndarray, ell: np.ndarray, y: np.ndarray, f: float, grids: tuple) -> np.ndarray:
        """Refits on n_bootstrap row resamples (a resample that cannot identify the law is redrawn)."""
        rng = np.random.default_rng(self.random_state)
        samples: list[np.ndarray] = []
        for _ in range(MAX_DRAWS_PER_SAMPLE * self.n_bootstrap):
            if len(samples) == self.n_bootstrap:
                break
            idx = rng.integers(0, len(y), len(y))
            if data_problem(r[idx], ell[idx], y[idx]) is None:
                fitted = _fit_points(self.form_, r[idx], ell[idx], y[idx], self.loss, f, *grids, starts_k=1, unique=True)
                if fitted is not None:
                    samples.append(fitted)
        if len(samples) < self.n_bootstrap:
            raise MemlawError(f"bootstrap: too few resamples of the {len(y)} points can identify the law; use more points")
        return np.array(samples, dtype=float).reshape(-1, 4)

    def _check_params(self) -> None:
        if self.form not in FORMS:
            raise MemlawError(f"unknown law form {self.form!r}; choose one of {', '.join(FORMS)}")
        if self.loss not in LOSSES:
            raise MemlawError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.f_scale is not None and not (np.isfinite(self.f_scale) and self.f_scale > 0):
            raise MemlawError(f"f_scale must be a positive number or None, got {self.f_scale!r}")
        if not 0 < self.confidence < 1:
            raise MemlawError(f"confidence must lie in (0, 1), got {self.confidence!r}")
        if int(self.n_bootstrap) != self.n_bootstrap or self.n_bootstrap < 0:
            raise MemlawError(f"n_bootstrap must be a non-negative integer, got {self.n_bootstrap!r}")

    def _intervals(self) -> dict[str, tuple[float, float]]:
        if len(self.bootstrap_params_) == 0:
            return {}
        lo, hi = _percentiles(self.bootstrap_params_, self.confidence)
        return {p: (float(lo[i]), float(hi[i])) for i, p in enumerate(self.form_.params)}

    # ------------------------------------------------------------------ using a fitted law
    @property
    def params_(self) -> np.ndarray:
        """The form's four parameters as an array, in its order (paper: C, α, β, b; bounded: C, α, β, L0)."""
        self._check_fitted()
        return np.array([getattr(self, f"{p}_") for p in self.form_.params])

    def _check_fitted(self) -> None:
        if not hasattr(self, "C_"):
            raise MemlawError("the memory law is not fitted: call fit() or from_dict() first")

    def predict(self, rank: ArrayLike, length: ArrayLike) -> np.ndarray:
        """Predicted ΔL (nats per trained token: answer and end-of-turn suffix); rank and length broadcast."""
        r, ell = np.asarray(rank, dtype=float), np.asarray(length, dtype=float)
        if np.any(r <= 0) or np.any(ell <= 0):
            raise MemlawError("rank and length must be positive")
        return self.form_.predict(self.params_, r, ell)

    def collapse(self, rank: ArrayLike, delta_loss: ArrayLike) -> np.ndarray:
        """What equals C·ℓ^(−β) under the law, from measured ΔL (paper: (ΔL − b)/r^α; bounded: (ΔL/(L0 − ΔL))/r^α)."""
        return self.form_.collapse(self.params_, np.asarray(rank, dtype=float), np.asarray(delta_loss, dtype=float))

    def score(self, rank: ArrayLike, length: ArrayLike, delta_loss: ArrayLike) -> float:
        """R² of the law's predictions on these points."""
        r, ell, y = _check_points(rank, length, delta_loss)
        return r2_score(y, self.predict(r, ell))

    def rank_for(self, length: float, delta_loss: float) -> RankPlan:
        """The smallest rank the law predicts reaches ΔL ≥ delta_loss at this length, with its bootstrap interval."""
        params = self.params_
        if not (np.isfinite(length) and length > 0 and np.isfinite(delta_loss)):
            raise MemlawError(f"length must be positive and delta_loss finite, got length={length}, delta_loss={delta_loss}")
        problem = self.form_.target_problem(params, delta_loss)
        if problem:
            raise MemlawError(problem)
        rank = float(self.form_.required_rank(params[None], length, delta_loss)[0])
        interval = None
        if len(self.bootstrap_params_):
            lo, hi = _percentiles(self.form_.required_rank(self.bootstrap_params_, length, delta_loss), self.confidence)
            interval = (float(lo), float(hi))
        return RankPlan(float(length), float(delta_loss), rank, next_power_of_two(rank), interval, self.confidence)

    # ------------------------------------------------------------------ law.json
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready entry: form, parameters, CIs, fit quality, settings and the bootstrap parameter sets."""
        return {
            "form": self.form,
            "n": self.n_,
            **{p: float(v) for p, v in zip(self.form_.params, self.params_)},
            "ci": {p: list(v) for p, v in self.ci_.items()},
            "r2": self.r2_,
            "mape": self.mape_,
            "aic": self.aic_,
            "bic": self.bic_,
            "loss": self.loss,
            "f_scale": self.f_scale_,
            "confidence": self.confidence,
            "bootstrap": self.bootstrap_params_.tolist(),
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ParametricMemoryLaw:
        """Rebuild a fitted law from a to_dict() entry (one form of one group of law.json)."""
        form = entry.get("form", DEFAULT_FORM)
        if form not in FORMS:
            raise MemlawError(f"law entry has unknown form {form!r}")
        params = FORMS[form].params
        missing = [p for p in params if p not in entry]
        if missing:
            raise MemlawError(f"law entry lacks {', '.join(missing)}")
        try:
            boot = np.array(entry.get("bootstrap", []), dtype=float).reshape(-1, 4)
            law = cls(
                form=form,
                loss=entry.get("loss", "soft_l1"),
                f_scale=entry.get("f_scale"),
                n_bootstrap=len(boot),
                confidence=float(entry.get("confidence", 0.95)),
            )
            law._set_params([float(entry[p]) for p in params])
            law.n_ = int(entry.get("n", 0))
            law.f_scale_ = entry.get("f_scale")
            for attr in ("r2", "mape", "aic", "bic"):
                value = entry.get(attr)
                setattr(law, f"{attr}_", math.nan if value is None else float(value))
            law.bootstrap_params_ = boot
            law.ci_ = {p: tuple(map(float, entry["ci"][p])) for p in params} if entry.get("ci") else law._intervals()
        except (TypeError, ValueError, KeyError) as e:
            raise MemlawError(f"malformed law entry: {e!r}") from None
        return law


# ---------------------------------------------------------------------- fit quality
def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination; nan when y is constant."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan


def mape(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute percentage error over the points with y ≠ 0."""
    nz = y != 0
    return float(100.0 * np.mean(np.abs(y[nz] - pred[nz]) / np.abs(y[nz]))) if nz.any() else math.nan


def information_criteria(residuals: np.ndarray, k: int) -> tuple[float, float]:
    """(AIC, BIC) of a k-parameter fit under Gaussian errors: n·ln(RSS/n) + 2k and n·ln(RSS/n) + k·ln n.

    Constants common to every model fitted to the same points are dropped: compare, do not read alone.
    """
    n = len(residuals)
    rss = max(float(np.sum(residuals**2)), np.finfo(float).tiny)  # an exact fit: very negative, not -inf
    base = n * math.log(rss / n)
    return base + 2 * k, base + k * math.log(n)


# ---------------------------------------------------------------------- input checks
def _check_points(rank: ArrayLike, length: ArrayLike, delta_loss: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = {}
    for name, values in (("rank", rank), ("length", length), ("delta_loss", delta_loss)):
        try:
            a = np.asarray(values, dtype=float)
        except (TypeError, ValueError) as e:
            raise MemlawError(f"{name} must be numbers: {e}") from None
        if a.ndim != 1:
            raise MemlawError(f"{name} must be one-dimensional, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise MemlawError(f"{name} has {int(np.sum(~np.isfinite(a)))} non-finite value(s)")
        arrays[name] = a
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise MemlawError(f"rank, length and delta_loss differ in length: {sizes}")
    if sizes["rank"] < 4:
        raise MemlawError(f"need at least 4 points to fit 4 parameters, got {sizes['rank']}")
    for name in ("rank", "length"):
        if np.any(arrays[name] <= 0):
            raise MemlawError(f"{name} must be positive, got min {arrays[name].min():g}")
    return arrays["rank"], arrays["length"], arrays["delta_loss"]


def data_problem(rank: np.ndarray, length: np.ndarray, delta_loss: np.ndarray) -> str | None:
    """Why these points cannot identify (C, α, β, b), or None when they can."""
    distinct = len(set(zip(rank.tolist(), length.tolist())))
    if distinct < 4:
        return f"need at least 4 distinct (rank, length) points, got {distinct}"
    if len(np.unique(rank)) < 2:
        return "all points share one rank, so alpha is not identifiable"
    if len(np.unique(length)) < 2:
        return "all points share one length, so beta is not identifiable"
    if np.ptp(delta_loss) == 0:
        return f"delta_loss is constant ({delta_loss[0]:g}), so the exponents are not identifiable"
    return None


# ---------------------------------------------------------------------- the estimator's core
def _rho_and_weight(z: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """scipy's robust loss ρ(z) of z = (res/f)², and ρ'(z), the IRLS weight."""
    if loss == "soft_l1":
        s = np.sqrt(1.0 + z)
        return 2.0 * (s - 1.0), 1.0 / s
    if loss == "huber":
        s = np.sqrt(z)
        return np.where(z <= 1.0, z, 2.0 * s - 1.0), 1.0 / np.maximum(s, 1.0)
    if loss == "cauchy":
        return np.log1p(z), 1.0 / (1.0 + z)
    return z, np.ones_like(z)


def _grid_starts(cost: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k lowest local minima (8-neighbourhood) of a 2-D cost grid within START_TOLERANCE of the best."""
    padded = np.pad(cost, 1, constant_values=np.inf)
    rows, cols = cost.shape
    is_min = np.isfinite(cost)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= cost <= padded[1 + di : 1 + di + rows, 1 + dj : 1 + dj + cols]
    is_min &= cost <= (1.0 + START_TOLERANCE) * cost.min()
    idx = np.flatnonzero(is_min)
    return idx[np.argsort(cost.ravel()[idx], kind="stable")][:k]


def _fit_points(
    form: LawForm, rank: np.ndarray, length: np.ndarray, y: np.ndarray, loss: str, f: float,
    alpha_grid: np.ndarray, beta_grid: np.ndarray, starts_k: int = MAX_STARTS, unique: bool = False,
) -> np.ndarray | None:
    """The form's parameters minimizing the summed robust loss: grid + linear solve, then joint refinement.

    With `unique`, None when the grid's best cost is tied (TIE_TOLERANCE) at several exponent pairs. A
    bootstrap resample of a lattice grid (ranks 2^j, lengths ℓ0·2^k) can keep only points whose
    covariate α·ln r − β·ln ℓ takes two values in some direction; both linear parameters then fit those
    two groups exactly at every scale of (α, β), the minimum is a flat valley, and which point of it the
    refinement ends at depends on the last bits of the arithmetic, i.e. on the machine. Such a resample
    does not identify the law and is redrawn, which keeps law.json the same on every machine.
    """
    from scipy.optimize import least_squares

    r0, l0 = np.exp(np.log(rank).mean()), np.exp(np.log(length).mean())
    lr, ll = np.log(rank / r0), np.log(length / l0)
    a, be = (g.ravel() for g in np.meshgrid(alpha_grid, beta_grid, indexing="ij"))
    starts, cost = form.grid(lr, ll, y, lambda z: _rho_and_weight(z, loss), f, a, be)  # (G, 4), (G,)
    if unique and np.count_nonzero(cost <= np.nanmin(cost) * (1.0 + TIE_TOLERANCE)) > 1:
        return None
    best = None
    for i in _grid_starts(cost.reshape(len(alpha_grid), len(beta_grid)), starts_k):
        res = least_squares(lambda p: form.value(p, lr, ll) - y, starts[i], jac=lambda p: form.jacobian(p, lr, ll),
                            loss=loss, f_scale=f, method="trf", x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise MemlawError("the exponent grid gave no finite fit; widen or change alpha_grid/beta_grid")
    return form.to_original(best.x, r0, l0)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 (nearest order statistic, so infinite samples stay well defined)."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail], axis=0, method="nearest")
    return lo, hi
