"""Ground truth: the exact probability-flow ODE solution of a mixture, to ~1e-10.

In lambda the probability-flow ODE of the VP process is dx/dlambda = alpha (x0(x, lambda) - alpha x)
(docs/mathematics.md). With the mixture's exact x0 it is integrated by scipy's DOP853 in float64.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .schedule import alpha_sigma


def alpha_of_lambda(lam: float) -> float:
    return alpha_sigma(lam)[0]


def sigma_of_lambda(lam: float) -> float:
    return alpha_sigma(lam)[1]


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


# Beyond this lambda (sigma ~ 6e-6) the flow has converged to well below any solver's error;
# the limit sigma -> 0 is then the data prediction at that level.
LAMBDA_FAR = 12.0


def ode_limit(mixture, x_start: torch.Tensor, lambda_start: float, lambda_end: float, rtol: float = 1e-10) -> torch.Tensor:
    """The exact ODE solution at lambda_end, which may be +inf (final sigma 0)."""
    if math.isfinite(lambda_end):
        return ode_solution(mixture, x_start, lambda_start, lambda_end, rtol=rtol)
    far = max(LAMBDA_FAR, lambda_start + 1.0)
    x = ode_solution(mixture, x_start, lambda_start, far, rtol=rtol)
    x0, _ = mixture.denoise(x, alpha_of_lambda(far), sigma_of_lambda(far))
    return x0


def default_cache_dir() -> Path:
    base = os.environ.get("DPMCLI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dpmcli")
    return Path(base)


class ReferenceCache:
    """Reference solutions on disk, keyed by a hash of everything they depend on.

    A key is built from a JSON description (kind, schedule, lambdas, solver settings, ...) and the
    raw bytes of the arrays involved (mixture parameters, x_T); a changed input gives a new key.
    ``directory=None`` disables the cache.
    """

    def __init__(self, directory: Path | None):
        self.directory = None if directory is None else Path(directory)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(description: dict, arrays: tuple[np.ndarray, ...] = ()) -> str:
        digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:32]

    def get_or_compute(self, description: dict, arrays: tuple[np.ndarray, ...], compute) -> torch.Tensor:
        if self.directory is None:
            self.misses += 1
            return compute()
        path = self.directory / f"{description.get('kind', 'reference')}-{self.key(description, arrays)}.npy"
        if path.exists():
            try:
                value = torch.from_numpy(np.load(path, allow_pickle=False))
                self.hits += 1
                return value
            except (OSError, ValueError):
                pass  # a damaged cache file is recomputed and overwritten
        self.misses += 1
        value = compute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            from .report import save_npy

            save_npy(path, value.detach().cpu().numpy())
        except OSError:
            pass  # a read-only cache only costs time
        return value
