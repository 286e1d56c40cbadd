"""Certifying a cut-off: the statistics behind `CalibratedPolicy`, pure and without state.

A logistic model over neighbourhood features and their pairwise products, fitted by Newton's
method; five-fold cross-fitting, so each label is judged by a fit that did not see it; and the
lowest confidence cut-off whose upper estimate of the served false-hit rate meets the target.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_PAIRS_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def design(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, products: bool = True) -> np.ndarray:
    """Standardized features and all their pairwise products (squares included).

    The products let the model say "high similarity counts only where the neighbours agree";
    kept small by the L2 penalty. `products=False`: the standardized features alone (a model
    fitted on few labels, whose interactions are given as features).
    """
    z = (x - mean) / scale
    if not products:
        return np.hstack([np.ones((len(z), 1)), z])
    width = z.shape[1]
    if width not in _PAIRS_CACHE:
        _PAIRS_CACHE[width] = np.triu_indices(width)
    rows, cols = _PAIRS_CACHE[width]
    return np.hstack([np.ones((len(z), 1)), z, z[:, rows] * z[:, cols]])


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities kept off exact 0 and 1, so error ratios stay defined."""
    return np.clip(1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50))), 1e-6, 1 - 1e-6)


def z_for(confidence_level: float) -> float:
    """Standard normal quantile by bisection on erf (no scipy dependency)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < confidence_level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@functools.lru_cache(maxsize=1024)
def poisson_upper(count: int, confidence_level: float) -> float:
    """Garwood's exact one-sided upper confidence bound of a Poisson mean after `count` events.

    The mean m at which P(X <= count) = 1 - confidence_level, found by bisection on the CDF
    (summed in log space, so large counts do not underflow).
    """

    def cdf(mean: float) -> float:
        if mean <= 0:
            return 1.0
        log_terms = [-mean + j * math.log(mean) - math.lgamma(j + 1) for j in range(count + 1)]
        top = max(log_terms)
        return math.exp(top) * sum(math.exp(t - top) for t in log_terms)

    lo, hi = float(count), count + 10.0 + 10.0 * math.sqrt(count + 1.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) > 1 - confidence_level:
            lo = mid
        else:
            hi = mid
    return hi


def poisson_upper_wh(counts: np.ndarray, z: float) -> np.ndarray:
    """`poisson_upper` for many counts at once, in the Wilson-Hilferty form: (k + 1) (1 - 1 /
    (9 (k + 1)) + z / (3 sqrt(k + 1)))^3, within about 1% of the exact bound from no event on."""
    k1 = np.asarray(counts, dtype=float) + 1.0
    return k1 * (1.0 - 1.0 / (9.0 * k1) + z / (3.0 * np.sqrt(k1))) ** 3


CLAIM_PSEUDO_ERRORS = 2.0


def audit_rate(z: float, bound: float, region_labels: int, floor: float, ceiling: float) -> float:
    """The share of served answers to audit: z^2 / bound labels' worth of evidence against the
    labels already above the cut-off, so a young region is checked often and a proven one at
    `floor`; never above `ceiling`."""
    wanted = z**2 / bound
    return min(ceiling, max(floor, wanted / (wanted + region_labels)))


def served_at_least(audits: int, max_audit_rate: float) -> int:
    """How many answers were served at least, given `audits` of them were audited at no more than
    `max_audit_rate`: where a restart resumes the warm-up (never past where it was)."""
    return math.ceil(audits / max_audit_rate) if max_audit_rate > 0 else 0


def warmup_target(bound: float, served: int, warmup: int, share: float) -> float:
    """The rate a cut-off is certified against after `served` answers: `share` of the bound at
    the first, rising linearly to the whole bound over `warmup` served answers."""
    if not warmup:
        return bound
    return bound * (share + (1.0 - share) * min(1.0, served / warmup))


def refit_due(observed: int, fitted_at: int) -> bool:
    """Refit after every 10% more labels (at least 10): refits cost O(labels), so their total
    time stays linear in the labels."""
    return observed - fitted_at >= max(10, fitted_at // 10)


def claim_ratio(claims, confidence_level: float) -> float:
    """Audited wrong answers over the wrong answers claimed when they were served, >= 1.

    `claims` are (confidence served with, right) of audits. The audited wrong answers count by
    their exact one-sided Poisson upper bound (`poisson_upper`), so a lucky run of audits cannot
    hide a shortfall; both counts get `CLAIM_PSEUDO_ERRORS`, so the ratio is defined (and above
    1) before the first audit: (3.0 + 2) / 2 = 2.5 at 95%.
    """
    claims = list(claims)
    wrong = sum(not right for _, right in claims)
    predicted = sum(1.0 - claimed for claimed, _ in claims)
    upper = poisson_upper(wrong, confidence_level)
    return max(1.0, (upper + CLAIM_PSEUDO_ERRORS) / (predicted + CLAIM_PSEUDO_ERRORS))


def fit_logistic(design_matrix: np.ndarray, y: np.ndarray, warm: np.ndarray | None, l2: float) -> np.ndarray:
    """L2-penalized logistic regression by Newton's method, started from `warm` (or zeros)."""
    w = np.zeros(design_matrix.shape[1]) if warm is None else warm.copy()
    penalty = l2 * np.eye(design_matrix.shape[1])
    penalty[0, 0] = 1e-6  # keeps the Hessian invertible when all labels sit at one extreme

    def loss(weights: np.ndarray) -> float:
        logits = design_matrix @ weights
        return float(np.logaddexp(0.0, logits).sum() - y @ logits + 0.5 * weights @ penalty @ weights)

    current = loss(w)
    for _ in range(50):  # Newton steps with backtracking, so the loss never goes up
        p = 1.0 / (1.0 + np.exp(-np.clip(design_matrix @ w, -50, 50)))
        grad = design_matrix.T @ (p - y) + penalty @ w
        hess = (design_matrix * (p * (1 - p))[:, None]).T @ design_matrix + penalty
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        scale = 1.0
        while scale > 1e-4 and loss(w - scale * step) > current:
            scale /= 2
        w = w - scale * step
        previous, current = current, loss(w)
        if previous - current < 1e-8:
            break
    return w


@dataclass(frozen=True)
class CrossFit:
    """A cross-fitted model: standardization, serving weights, and each label's held-out logit."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    held_out_logits: np.ndarray


def cross_fit(x: np.ndarray, y: np.ndarray, folds: int, fit, products: bool = True) -> CrossFit | None:
    """Fit `folds` models, each on all labels but one fold (`fit(design, y) -> weights`); None
    while a fold's training part holds one class only.

    Why: a model checked on the labels it was fitted to looks calibrated by construction (a
    logistic fit matches its training errors on average), so a young memory's model was trusted
    far past what it knew. The serving weights are the mean of the fold fits: with one design
    for all, their mean logit is the mean of the folds' logits, and like each fold's prediction
    of its held-out labels it was not fitted to what it scores.
    """
    if len(y) < 2 * folds or y.min() == y.max():
        return None
    mean = x.mean(axis=0)
    scale = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    matrix = design(x, mean, scale, products)
    fold = np.random.default_rng(len(y)).permutation(len(y)) % folds
    held_out = np.empty(len(y))
    fits = []
    for k in range(folds):
        train = fold != k
        if y[train].min() == y[train].max():
            return None
        weights = fit(matrix[train], y[train])
        held_out[~train] = matrix[~train] @ weights
        fits.append(weights)
    return CrossFit(mean, scale, np.mean(fits, axis=0), held_out)


@dataclass(frozen=True)
class CutOff:
    """The chosen cut-off: the labels at or above it, their errors, and the served estimate."""

    threshold: float
    labels: int
    errors: int
    estimate: float


def min_labels(z: float, bound: float) -> float:
    """The fewest labels a cut-off may stand on: with none wrong, about z^2 / n bounds the rate.

    A floor, not the check: the label check's exact bound with none wrong (`poisson_upper_wh`,
    3.0 at 95% against z^2 = 2.71) asks about 10% more labels of a region before it certifies."""
    return z**2 * (1 - bound) / bound


def choose_cut_off(
    logits: np.ndarray,
    y: np.ndarray,
    p_traffic: np.ndarray | None,
    *,
    claim_ratio: float,
    z: float,
    bound: float,
    target: float,
) -> CutOff | None:
    """The lowest confidence cut-off whose estimated served false-hit rate meets `target`.

    The estimate is the model's predicted error over recent traffic above the cut-off, scaled by
    the larger of two corrections: the one-sided Poisson upper bound (`z`, `poisson_upper_wh`)
    of the errors observed on the labels above it over those predicted (held-out predictions),
    and `claim_ratio`, what the audits of served hits found against what was claimed when they
    were served. At least z^2 (1 - bound) / bound labels must lie above a cut-off. None where no
    cut-off passes.
    """
    p_lab = sigmoid(logits)
    p_tr = p_lab if p_traffic is None else p_traffic
    order = np.argsort(-p_lab, kind="stable")
    tau = p_lab[order]
    n = np.arange(1, len(tau) + 1, dtype=float)
    observed = np.cumsum(1.0 - y[order])
    predicted = np.maximum(np.cumsum(1.0 - tau), 1e-12)
    kappa = poisson_upper_wh(observed, z) / predicted
    served_desc = np.sort(p_tr)[::-1]
    served = np.searchsorted(-served_desc, -tau, side="right")  # traffic at or above each cut-off
    served_error = np.cumsum(1.0 - served_desc)[np.maximum(served, 1) - 1] / np.maximum(served, 1)
    estimate = served_error * np.maximum(kappa, claim_ratio)
    n_min = min_labels(z, bound)
    distinct = np.append(tau[1:] < tau[:-1], True)  # cut only between distinct scores
    feasible = np.flatnonzero(distinct & (n >= n_min) & (served > 0) & (estimate <= target))
    if not len(feasible):
        return None
    i = int(feasible[-1])  # the lowest cut-off that passes: the most hits
    return CutOff(float(tau[i]), int(n[i]), int(observed[i]), float(estimate[i]))
