"""The pieces every step grid is made of, dpmcli's own (:mod:`dpmcli.spacing`) and diffusers' (:mod:`dpmcli.compat`).

A :class:`Grid` is ``timesteps`` (N values, possibly fractional) and ``sigmas`` (N+1 values in
diffusers' convention sigma = sqrt((1 - alpha_bar) / alpha_bar), the last one the final sigma).
Here: the top timestep left after ``--lambda-min-clipped``, diffusers' integer timestep grids
(linspace, leading, trailing), their range check, and the sigma ramps (karras, exponential, beta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import SolverConfig
from .errors import ConfigError
from .schedule import Schedule

BETA_SPACING_SHAPE = (0.6, 0.6)


@dataclass
class Grid:
    timesteps: np.ndarray  # (N,) float64, the timestep each model evaluation uses
    sigmas: np.ndarray  # (N+1,) float64, diffusers' sigma, last = final sigma
    warnings: list[str] = field(default_factory=list)


def top_timestep(schedule: Schedule, cfg: SolverConfig, lambdas: np.ndarray | None = None, count: int | None = None) -> int:
    """Number of training timesteps kept after --lambda-min-clipped (diffusers' ``last_timestep``).

    ``count`` is the number of training timesteps the grid spans (diffusers' num_train_timesteps,
    which it keeps even when trained betas are fewer); the table's length by default.
    """
    lam = schedule.lambdas if lambdas is None else lambdas
    clipped = int(np.searchsorted(lam[::-1], cfg.lambda_min_clipped, side="left"))
    last = (schedule.train_steps if count is None else count) - clipped
    if last < 2:
        raise ConfigError(
            f"--lambda-min-clipped: {cfg.lambda_min_clipped} clips away (almost) the whole schedule; use a smaller value"
        )
    return last


def integer_timesteps(cfg: SolverConfig, last_timestep: int, exact_count: bool = True) -> np.ndarray:
    """diffusers' linspace / leading / trailing timesteps (integers, decreasing).

    diffusers builds ``trailing`` with a float-step ``arange`` that can yield one point too many
    (998 steps give 999 timesteps, the last -1); ``exact_count`` takes exactly N points instead.
    """
    n = cfg.steps
    if cfg.spacing == "linspace":
        t = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
    elif cfg.spacing == "leading":
        ratio = last_timestep // (n + 1)
        t = (np.arange(0, n + 1) * ratio).round()[::-1][:-1] + cfg.steps_offset
    elif cfg.spacing == "trailing":
        if exact_count:
            # over the kept range (diffusers divides the full range, which overshoots when clipped)
            t = (last_timestep - np.arange(n) * (last_timestep / n)).round() - 1
        else:
            t = np.arange(last_timestep, 0, -(cfg.train_steps / n)).round() - 1
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(cfg.spacing)
    return t.astype(np.int64)


def check_timestep_range(t: np.ndarray, schedule: Schedule, cfg: SolverConfig, count: int | None = None) -> None:
    top = (schedule.train_steps if count is None else count) - 1
    if np.all((t >= 0) & (t <= top)):
        return
    bad = int(t[(t < 0) | (t > top)][0])
    if cfg.steps_offset and bad > top:
        largest = top - int(t.max() - cfg.steps_offset)
        raise ConfigError(
            f"--steps-offset: {cfg.steps_offset} is too large for --spacing {cfg.spacing} with --steps {cfg.steps}: "
            f"it puts timestep {bad} beyond {top}; here it must be at most {max(largest, 0)}"
        )
    raise ConfigError(
        f"--steps: {cfg.steps} is not allowed with --spacing {cfg.spacing}: it puts timestep {bad} outside 0..{top}; "
        "use fewer --steps or another --spacing"
    )


def karras_ramp(sigma_max: float, sigma_min: float, ramp: np.ndarray, rho: float) -> np.ndarray:
    """Karras et al.'s sigma_i = (sigma_max^(1/rho) + r_i (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    Where sigma^(1/rho) would overflow (small rho) it is evaluated in logarithms instead: log of
    the bracket = log((1 - r) e^a + r e^b), a = log(sigma_max)/rho, b = log(sigma_min)/rho.
    """
    r = np.asarray(ramp, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        # the formula as published wherever it holds, so a grid keeps its bits across versions
        lo, hi = np.float64(sigma_min) ** (1.0 / rho), np.float64(sigma_max) ** (1.0 / rho)
        direct = (hi + r * (lo - hi)) ** rho
    if np.all(np.isfinite(direct)) and np.all(direct > 0) and math.isfinite(hi):
        return direct
    a, b = math.log(sigma_max) / rho, math.log(sigma_min) / rho
    with np.errstate(divide="ignore"):
        if max(abs(a), abs(b)) < 1.0:
            # the bracket is 1 + (1 - r) expm1(a) + r expm1(b): log1p keeps what large rho needs
            log_bracket = np.log1p((1.0 - r) * math.expm1(a) + r * math.expm1(b))
        else:
            log_bracket = np.logaddexp(a + np.log1p(-r), b + np.log(r))
    return np.exp(rho * log_bracket)


def sigma_ramp(kind: str, sigma_max: float, sigma_min: float, count: int, rho: float) -> np.ndarray:
    """``count`` sigmas from sigma_max down to sigma_min on the karras, exponential or beta ramp."""
    ramp = np.linspace(0.0, 1.0, count)
    if kind == "karras":
        return karras_ramp(sigma_max, sigma_min, ramp, rho)
    if kind == "exponential":
        return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), count))
    if kind == "beta":
        from scipy.stats import beta as beta_dist

        ppf = beta_dist.ppf(1.0 - ramp, *BETA_SPACING_SHAPE)
        return sigma_min + ppf * (sigma_max - sigma_min)
    raise ValueError(kind)  # pragma: no cover
