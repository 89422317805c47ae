"""Ground truth: the exact probability-flow ODE solution of a mixture, to ~1e-10.

In lambda the probability-flow ODE of the VP process is dx/dlambda = alpha (x0(x, lambda) - alpha x)
(docs/mathematics.md). With the mixture's exact x0 it is integrated by scipy's DOP853 in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def alpha_of_lambda(lam: float) -> float:
    return math.sqrt(0.5 * (1.0 + math.tanh(lam)))


def sigma_of_lambda(lam: float) -> float:
    return math.sqrt(0.5 * (1.0 - math.tanh(lam)))


def ode_solution(mixture, x_start: torch.Tensor, lambda_start: float, lambda_end: float, rtol: float = 1e-10, atol: float = 1e-12) -> torch.Tensor:
    """x at lambda_end of the probability-flow ODE started from x_start at lambda_start (float64, CPU)."""
    from scipy.integrate import solve_ivp

    x = x_start.detach().double().cpu()
    shape = x.shape

    def rhs(lam, y):
        state = torch.from_numpy(y).reshape(shape)
        alpha, sigma = alpha_of_lambda(lam), sigma_of_lambda(lam)
        x0, _ = mixture.denoise(state, alpha, sigma)
        return (alpha * (x0 - alpha * state)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (lambda_start, lambda_end), x.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:  # pragma: no cover - DOP853 on a smooth problem
        raise ArithmeticError(f"reference ODE solver failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
