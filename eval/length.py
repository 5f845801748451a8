"""Win rate, its standard error, and AlpacaEval 2's length-controlled win rate. Pure numpy.

Judges prefer longer answers, so a model can raise its win rate by writing more. AlpacaEval 2
fits a logistic regression of the judge's preference on the length difference and reports the
win rate that regression predicts at equal length. With one pair of models (no pool of other
models to learn each instruction's difficulty from) the model is
    P(candidate preferred) = sigmoid(theta + phi * tanh(delta / std(delta)))
with delta = candidate length - baseline length in characters (as AlpacaEval), fitted by
Newton's method on the preferences (1 win, 0.5 tie, 0 loss), and the length-controlled win rate
is sigmoid(theta): the same quality at delta = 0.
"""
from __future__ import annotations

import numpy as np

PREFERENCE = {"win": 1.0, "tie": 0.5, "loss": 0.0}
RIDGE = 1e-3  # keeps the fit finite when one side wins every item
NEWTON_STEPS = 50


def win_rate(outcomes: list[str]) -> tuple[float | None, float | None]:
    """(win rate with ties as half, its standard error over items), None when there is nothing to rate."""
    values = np.array([PREFERENCE[o] for o in outcomes], float)
    if not len(values):
        return None, None
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


def _logistic_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients of y ~ sigmoid(X @ w) (y may be fractional), by Newton's method with a small ridge."""
    w = np.zeros(x.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (y - p) - RIDGE * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + RIDGE * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return w


def length_controlled_win_rate(outcomes: list[str], candidate_lengths: list[float],
                               baseline_lengths: list[float]) -> float | None:
    """The win rate at equal answer length (see the module's docstring); None without items."""
    if not outcomes:
        return None
    y = np.array([PREFERENCE[o] for o in outcomes], float)
    delta = np.asarray(candidate_lengths, float) - np.asarray(baseline_lengths, float)
    spread = delta.std()
    feature = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    theta = _logistic_fit(np.column_stack([np.ones_like(y), feature]), y)[0]
    return float(1.0 / (1.0 + np.exp(-theta)))
