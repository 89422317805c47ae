"""Discrete VP noise schedules: betas -> alpha_bar -> (alpha_t, sigma_t, lambda) and back.

A schedule is a table of ``alphas_cumprod`` over the training timesteps 0..N-1. Between
integer timesteps it is continued by linear interpolation of lambda (the half-log-SNR),
which is what diffusers' sigma->timestep conversion does (lambda = -log sigma): the map
timestep <-> lambda is then monotone and exactly invertible, so a model evaluated at a
fractional timestep sees exactly the noise level the solver assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import SolverConfig
from .errors import ConfigError


def make_betas(cfg: SolverConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The beta table of ``cfg`` (float64 by default; float32 reproduces diffusers' arithmetic)."""
    n = cfg.train_steps
    if cfg.trained_betas is not None:
        return torch.tensor(cfg.trained_betas, dtype=dtype)
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=dtype)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=dtype) ** 2
    if cfg.beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal's cosine alpha_bar, betas capped at 0.999; computed in Python floats.
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=dtype)
    raise ConfigError(f"--beta-schedule: unknown schedule {cfg.beta_schedule!r}")


def rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that its last value is 0 and its first is unchanged."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


@dataclass(frozen=True, eq=False)
class Schedule:
    """alpha_bar over the integer training timesteps, float64 (values may be float32-rounded in compat mode)."""

    alphas_cumprod: np.ndarray

    @classmethod
    def from_config(cls, cfg: SolverConfig) -> "Schedule":
        # compat mode repeats diffusers' float32 betas and cumulative product.
        dtype = torch.float32 if cfg.compat == "diffusers" else torch.float64
        betas = make_betas(cfg, dtype)
        if cfg.rescale_zero_snr:
            betas = rescale_to_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if cfg.rescale_zero_snr:
            # alpha_bar = 0 would make lambda = -inf at the first step; diffusers uses the same floor.
            alphas_cumprod[-1] = 2.0**-24
        abar = alphas_cumprod.double().numpy().copy()
        if not np.all(np.isfinite(abar)) or np.any(abar <= 0) or np.any(abar >= 1):
            raise ConfigError("--beta-schedule: the betas give alpha_bar outside (0, 1); check the schedule")
        if np.any(np.diff(abar) >= 0):
            raise ConfigError("--beta-schedule: alpha_bar must decrease strictly (every beta > 0)")
        abar.setflags(write=False)
        return cls(abar)

    @property
    def train_steps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def lambdas(self) -> np.ndarray:
        """lambda = log(alpha_t / sigma_t) at the integer timesteps (decreasing)."""
        abar = self.alphas_cumprod
        return 0.5 * (np.log(abar) - np.log1p(-abar))

    @property
    def sigmas(self) -> np.ndarray:
        """diffusers' sigma = sqrt((1 - alpha_bar) / alpha_bar) = exp(-lambda) at the integer timesteps."""
        return np.exp(-self.lambdas)

    def lambda_at(self, timestep) -> np.ndarray:
        """lambda at (possibly fractional) timesteps in [0, N-1], linear between integers."""
        t = np.asarray(timestep, dtype=np.float64)
        return np.interp(t, np.arange(self.train_steps, dtype=np.float64), self.lambdas)

    def timestep_at(self, lambda_) -> np.ndarray:
        """Inverse of :meth:`lambda_at` (lambda outside the table is clamped to its ends)."""
        lam = np.asarray(lambda_, dtype=np.float64)
        return np.interp(lam, self.lambdas[::-1], np.arange(self.train_steps, dtype=np.float64)[::-1])


def alpha_sigma(lam: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) at half-log-SNR lambda, accurate for every lambda (+inf gives (1, 0))."""
    if lam > 0:
        e = math.exp(-lam)
        alpha = 1.0 / math.sqrt(1.0 + e * e)
        return alpha, e * alpha
    e = math.exp(lam)
    sigma = 1.0 / math.sqrt(1.0 + e * e)
    return e * sigma, sigma


def vp_coefficients(sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha_t, sigma_t, lambda) of diffusers' sigma; sigma = 0 gives (1, 0, +inf) without a warning."""
    s = np.asarray(sigma, dtype=np.float64)
    alpha_t = 1.0 / np.sqrt(1.0 + s * s)
    sigma_t = s * alpha_t
    with np.errstate(divide="ignore"):
        lam = -np.log(s)
    return alpha_t, sigma_t, lam
