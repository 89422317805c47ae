"""Step grids: where the N model evaluations sit, and the final sigma the run ends on.

A grid is ``timesteps`` (N values, possibly fractional) and ``sigmas`` (N+1 values in
diffusers' convention sigma = sqrt((1 - alpha_bar) / alpha_bar), the last one the final
sigma). Two families:

* timestep grids (linspace, leading, trailing, time-uniform, logsnr, time-quadratic) place
  N+1 points from the top timestep down to timestep 0 and evaluate the model at the first N;
  the last point is the final sigma (``sigma-min``) or is replaced by 0 (``zero``).
* sigma grids (karras, exponential, beta) place N evaluation points from sigma_max down to
  sigma_min, then append 0 (``zero``); with ``sigma-min`` they place N+1 points so that the
  last step does not have zero length.

``compat="diffusers"`` reproduces diffusers' DPMSolverMultistepScheduler.set_timesteps
instead, quirks included (integer timesteps, float32 sigmas, N sigma points then the final one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

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


def _check_timestep_range(t: np.ndarray, schedule: Schedule, cfg: SolverConfig, count: int | None = None) -> None:
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

    Evaluated in logarithms, so that sigma^(1/rho) cannot overflow at small rho nor lose its
    digits at large rho: log of the bracket = log((1 - r) e^a + r e^b), a = log(sigma_max)/rho,
    b = log(sigma_min)/rho.
    """
    a, b = math.log(sigma_max) / rho, math.log(sigma_min) / rho
    r = np.asarray(ramp, dtype=np.float64)
    with np.errstate(divide="ignore"):
        if max(abs(a), abs(b)) < 1.0:
            # the bracket is 1 + (1 - r) expm1(a) + r expm1(b): log1p keeps what large rho needs
            log_bracket = np.log1p((1.0 - r) * math.expm1(a) + r * math.expm1(b))
        else:
            log_bracket = np.logaddexp(a + np.log1p(-r), b + np.log(r))
    return np.exp(rho * log_bracket)


def _sigma_ramp(kind: str, sigma_max: float, sigma_min: float, count: int, rho: float, diffusers: bool = False) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, count)
    if kind == "karras" and diffusers:
        # diffusers' own arithmetic (rho = 7 there, where powers are safe), to the last bit
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        return (hi + ramp * (lo - hi)) ** rho
    if kind == "karras":
        return karras_ramp(sigma_max, sigma_min, ramp, rho)
    if kind == "exponential":
        return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), count))
    if kind == "beta":
        from scipy.stats import beta as beta_dist

        ppf = beta_dist.ppf(1.0 - ramp, *BETA_SPACING_SHAPE)
        return sigma_min + ppf * (sigma_max - sigma_min)
    raise ValueError(kind)  # pragma: no cover


def make_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    grid = _diffusers_grid(schedule, cfg) if cfg.compat == "diffusers" else _own_grid(schedule, cfg)
    grid.warnings[:0] = list(schedule.notes)
    _check_grid(schedule, cfg, grid)
    return grid


def _own_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    n = cfg.steps
    last = top_timestep(schedule, cfg)
    top = float(last - 1)
    sigma_of = schedule.sigmas
    sigma_max, sigma_min = float(np.exp(-schedule.lambda_at(top))), float(sigma_of[0])
    final = 0.0 if cfg.final_sigma == "zero" else sigma_min
    warnings: list[str] = []

    if cfg.spacing in ("linspace", "leading", "trailing"):
        t = integer_timesteps(cfg, last)
        _check_timestep_range(t, schedule, cfg)
        if len(t) != n:
            warnings.append(f"grid: {cfg.spacing} spacing gives {len(t)} timesteps for --steps {n}; running {len(t)}")
        timesteps = t.astype(np.float64)
        sigmas = np.concatenate([np.exp(-schedule.lambda_at(timesteps)), [final]])
    elif cfg.spacing in ("time-uniform", "logsnr", "time-quadratic"):
        if cfg.spacing == "time-uniform":
            points = np.linspace(top, 0.0, n + 1)
        elif cfg.spacing == "logsnr":
            lam = np.linspace(float(schedule.lambda_at(top)), float(schedule.lambda_at(0.0)), n + 1)
            points = schedule.timestep_at(lam)
            points[0], points[-1] = top, 0.0
        else:
            # DPM-Solver's quadratic grid in continuous time t = (timestep + 1) / N_train.
            t_top, t_end = (top + 1.0) / schedule.train_steps, 1.0 / schedule.train_steps
            t = np.linspace(np.sqrt(t_top), np.sqrt(t_end), n + 1) ** 2
            points = np.clip(t * schedule.train_steps - 1.0, 0.0, top)
        timesteps = points[:-1].copy()
        sigmas = np.concatenate([np.exp(-schedule.lambda_at(timesteps)), [final]])
    elif cfg.spacing in ("karras", "exponential", "beta"):
        count = n if cfg.final_sigma == "zero" else n + 1
        ramp = _sigma_ramp(cfg.spacing, sigma_max, sigma_min, count, cfg.rho)
        ramp[0] = sigma_max  # pin the ends against round-off
        if count > 1:
            ramp[-1] = sigma_min
        evals = ramp[:n]
        sigmas = np.concatenate([evals, [final]])
        timesteps = schedule.timestep_at(-np.log(evals))
    elif cfg.spacing == "custom" and cfg.timesteps is not None:
        timesteps = np.asarray(cfg.timesteps, dtype=np.float64)
        sigmas = np.concatenate([np.exp(-schedule.lambda_at(timesteps)), [final]])
    elif cfg.spacing == "custom":
        sigmas = np.asarray(cfg.sigmas, dtype=np.float64)
        full_max = float(sigma_of[-1])
        lo, hi = sigma_min * (1 - 1e-9), full_max * (1 + 1e-9)
        bad = [float(s) for s in sigmas[:-1] if not lo <= s <= hi]
        if bad:
            raise ConfigError(
                f"--sigmas: {bad[0]} lies outside the schedule's range [{sigma_min:.6g}, {full_max:.6g}]; "
                "the model cannot be evaluated there"
            )
        timesteps = schedule.timestep_at(-np.log(sigmas[:-1]))
    else:  # pragma: no cover - guarded by validation
        raise ConfigError(f"--spacing: unknown spacing {cfg.spacing!r}")
    return Grid(timesteps=np.asarray(timesteps, dtype=np.float64), sigmas=np.asarray(sigmas, dtype=np.float64), warnings=warnings)


def _diffusers_sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Timestep of each sigma by linear interpolation in log sigma, clamped to the table (as diffusers)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def _diffusers_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    n = cfg.steps
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
    train_sigmas = (((1 - abar) / abar) ** 0.5).numpy()
    lambda32 = (torch.log(torch.sqrt(abar)) - torch.log(torch.sqrt(1 - abar))).double().numpy()
    # diffusers spans its timestep grids over num_train_timesteps, even when trained betas are fewer
    count = cfg.train_steps
    log_sigmas = np.log(train_sigmas)
    warnings: list[str] = []
    if count != schedule.train_steps:
        table = schedule.train_steps
        effect = (
            f"every timestep from {table - 1} up has the last beta's noise level" if count > table
            else f"the betas beyond timestep {count - 1} are never used"
        )
        warnings.append(
            f"--trained-betas: {table} betas but --train-steps {count}: as in diffusers the grid spans timesteps "
            f"0..{count - 1} and {effect}; pass --train-steps {table} to match the betas"
        )
    rounds = cfg.beta_schedule != "squaredcos_cap_v2"
    # set_timesteps(timesteps=...) takes the given integers as they are; every other grid clips first
    last = None if cfg.spacing == "custom" else top_timestep(schedule, cfg, lambdas=lambda32, count=count)
    if cfg.spacing == "custom":
        timesteps = np.asarray(cfg.timesteps, dtype=np.float64)
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    elif cfg.spacing in ("linspace", "leading", "trailing"):
        timesteps = integer_timesteps(cfg, last, exact_count=False)
        _check_timestep_range(timesteps, schedule, cfg, count=count)
        if len(timesteps) != n:
            warnings.append(f"grid: diffusers' {cfg.spacing} spacing gives {len(timesteps)} timesteps for --steps {n}; running {len(timesteps)}")
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    elif cfg.spacing == "logsnr":
        # diffusers' use_lu_lambdas: uniform in log sigma over N points.
        ramp = np.linspace(0.0, 1.0, n)
        hi, lo = float(log_sigmas[-1]), float(log_sigmas[0])
        sigmas = np.exp(hi + ramp * (lo - hi))
        timesteps = _diffusers_sigma_to_t(sigmas, log_sigmas)
        timesteps = timesteps.round() if rounds else timesteps
    else:
        sigma_max, sigma_min = float(train_sigmas[-1]), float(train_sigmas[0])
        sigmas = _sigma_ramp(cfg.spacing, sigma_max, sigma_min, n, 7.0, diffusers=True)
        timesteps = _diffusers_sigma_to_t(sigmas, log_sigmas)
        if cfg.spacing == "karras" and rounds:
            timesteps = timesteps.round()
    final = 0.0 if cfg.final_sigma == "zero" else float(train_sigmas[0])
    sigmas = np.concatenate([sigmas, [final]]).astype(np.float32).astype(np.float64)
    # diffusers stores timesteps as int64: fractional ones are truncated, not rounded.
    timesteps = np.asarray(timesteps).astype(np.int64).astype(np.float64)
    return Grid(timesteps=timesteps, sigmas=sigmas, warnings=warnings)


def _check_grid(schedule: Schedule, cfg: SolverConfig, grid: Grid) -> None:
    """Zero-length steps and repeated timesteps are fixed (own grids) or reported (compat), never silent."""
    sig, ts = grid.sigmas, grid.timesteps
    if not np.all(np.isfinite(sig)) or not np.all(np.isfinite(ts)):
        raise ConfigError("grid: the step grid contains non-finite values; check the schedule options")
    rising = np.nonzero(sig[1:] > sig[:-1])[0]
    if len(rising):
        i = int(rising[0])
        if cfg.compat == "diffusers":
            grid.warnings.append(
                f"grid: sigma rises from step {i} to {i + 1} ({sig[i]:.9g} -> {sig[i + 1]:.9g}), "
                "as diffusers computes this grid; kept in compat mode"
            )
        else:
            raise ConfigError(f"grid: sigma rises from step {i} to {i + 1} ({sig[i]:.6g} -> {sig[i + 1]:.6g}); check the grid options")
    same = np.nonzero(sig[1:] == sig[:-1])[0]
    if len(same):
        if cfg.compat == "diffusers":
            grid.warnings.append(
                f"grid: {len(same)} zero-length step(s) (repeated sigma at step {int(same[0])}); "
                "kept as diffusers would run them"
            )
        else:
            keep = np.r_[sig[:-1] != sig[1:], True]  # the last point of each run of equal sigmas
            new_sig = sig[keep]
            new_ts = ts[keep[:-1]]
            grid.warnings.append(
                f"grid: removed {len(sig) - len(new_sig)} zero-length step(s) (repeated sigma); "
                f"running {len(new_ts)} steps instead of {len(ts)}"
            )
            grid.sigmas, grid.timesteps = new_sig, new_ts
            ts = new_ts
    dup = np.nonzero(ts[1:] == ts[:-1])[0]
    if len(dup):
        grid.warnings.append(
            f"grid: timestep {ts[int(dup[0])]:g} is used by {len(dup) + 1} consecutive steps "
            "(the model sees the same timestep at different sigmas)"
        )
    if len(grid.timesteps) == 0:
        raise ConfigError("grid: no steps left after removing zero-length steps; use fewer --steps")
