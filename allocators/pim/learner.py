"""Online model of one app's response to core type and page locality, with
confidence bounds, learned from the agent's counters (pure).

- Big cores: mean service time = busy core-seconds / completions, summed over
  windows; its standard error is mean / sqrt(n) (service times near exponential).
- PIM cores: service time is linear in the share of remote accesses,
  s(x) = a + b * x with x = 1 - locality, b >= 0; Bayesian linear regression
  over per-stack windows (weight = completions / s^2), so every window during
  a page migration (locality moving) teaches how much locality matters.
- Residual: log(measured P99 / model P99) on settled, pooled windows (EWMA), so
  whatever the queueing model misses (contention, warm-up) is learned too. A P99
  from n requests scatters by itself (log sd about sqrt(4.7 / n) for an
  exponential tail: 0.18 at 150 requests); that part of the spread is sampling,
  not model error, and is taken out before the bound is set.
State is a plain dict (JSON-able) so the controller can log and replay it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

B_PRIOR_SCALE = 3.0  # prior std of b, in units of the first PIM service time seen
RESIDUAL_ALPHA = 0.2
# Variance of log(P99 estimate) x requests, exponential tail: q / ((1 - q) ln(1/(1-q))^2).
P99_LOG_VAR = 0.99 / (0.01 * math.log(100.0) ** 2)


def new_state() -> dict[str, Any]:
    return {
        "cpu_n": 0.0,
        "cpu_busy_ms": 0.0,
        "pim": None,
        "y0": None,
        "res": 0.0,
        "res_var": 0.0,
        "res_noise": 0.0,
        "res_n": 0,
    }


def observe_service(st: dict[str, Any], cpu_n: int, cpu_busy_s: float, pim_n: tuple[int, ...],
                    pim_busy_s: tuple[float, ...], locality: tuple[float, ...]) -> None:  # fmt: skip
    if cpu_n > 0:
        st["cpu_n"] += cpu_n
        st["cpu_busy_ms"] += cpu_busy_s * 1000.0
    for k, busy, loc in zip(pim_n, pim_busy_s, locality, strict=True):
        if k < 5:
            continue
        y = busy * 1000.0 / k
        x = 1.0 - loc
        if st["pim"] is None:
            st["y0"] = y
            prec_b = 1.0 / (B_PRIOR_SCALE * y) ** 2
            st["pim"] = {"lam": [[1e-9, 0.0], [0.0, prec_b]], "eta": [0.0, 0.0]}
        w = k / (y * y)
        lam, eta = st["pim"]["lam"], st["pim"]["eta"]
        lam[0][0] += w
        lam[0][1] += w * x
        lam[1][0] += w * x
        lam[1][1] += w * x * x
        eta[0] += w * y
        eta[1] += w * x * y


def cpu_service(st: dict[str, Any], kappa: float) -> float:
    """Upper confidence bound of the big-core service time (ms); inf when unseen."""
    if st["cpu_n"] < 5:
        return math.inf
    mean = st["cpu_busy_ms"] / st["cpu_n"]
    return mean * (1.0 + kappa / math.sqrt(st["cpu_n"]))


def pim_service(st: dict[str, Any], x: np.ndarray, kappa: float) -> np.ndarray:
    """Upper confidence bound of the PIM service time (ms) at remote shares ``x``."""
    x = np.asarray(x, float)
    if st["pim"] is None:
        return np.full_like(x, np.inf)
    lam = np.array(st["pim"]["lam"])
    cov = np.linalg.inv(lam)
    mean = cov @ np.array(st["pim"]["eta"])
    a, b = float(mean[0]), max(float(mean[1]), 0.0)  # remote access never helps
    var = cov[0, 0] + 2 * x * cov[0, 1] + x * x * cov[1, 1]
    return a + b * x + kappa * np.sqrt(np.maximum(var, 0.0))


def observe_residual(
    st: dict[str, Any], measured_ms: float, predicted_ms: float, n_requests: int = 0
) -> None:
    """One residual from a P99 measured on ``n_requests`` requests (0: unknown, no
    sampling variance assumed)."""
    if not (math.isfinite(measured_ms) and math.isfinite(predicted_ms)) or predicted_ms <= 0:
        return
    r = math.log(max(measured_ms, 1e-6) / predicted_ms)
    d = r - st["res"]
    st["res"] += RESIDUAL_ALPHA * d
    st["res_var"] = (1 - RESIDUAL_ALPHA) * (st["res_var"] + RESIDUAL_ALPHA * d * d)
    noise = P99_LOG_VAR / n_requests if n_requests > 0 else 0.0
    st["res_noise"] = st.get("res_noise", 0.0) + RESIDUAL_ALPHA * (noise - st.get("res_noise", 0.0))
    st["res_n"] += 1


def residual_factor(st: dict[str, Any], kappa: float) -> float:
    """Multiplier on the model's P99: the learned bias plus its spread, never below 1
    (the model is only trusted to be optimistic, not pessimistic)."""
    if st["res_n"] < 3:
        return 1.0
    noise = st.get("res_noise", 0.0)
    # Spread beyond what sampling explains is model error; sampling still leaves the
    # EWMA mean uncertain by its own variance times alpha / (2 - alpha).
    model_var = max(st["res_var"] - noise, 0.0)
    mean_var = noise * RESIDUAL_ALPHA / (2.0 - RESIDUAL_ALPHA)
    return max(1.0, math.exp(st["res"] + kappa * math.sqrt(model_var + mean_var)))
