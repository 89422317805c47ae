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
instead, quirks included (integer timesteps, float32 sigmas, N sigma points then the final one):
:func:`dpmcli.compat.diffusers_grid`. The pieces both families share are in :mod:`dpmcli.grid`.
"""

from __future__ import annotations

import numpy as np

from .compat import diffusers_grid
from .config import SolverConfig
from .errors import ConfigError
from .grid import Grid, check_timestep_range, integer_timesteps, sigma_ramp, top_timestep
from .schedule import Schedule


def make_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    if cfg.compat == "diffusers":
        grid = diffusers_grid(schedule, cfg)
    else:
        grid = _own_grid(schedule, cfg) if schedule.process == "vp" else _lambda_grid(schedule, cfg)
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
        check_timestep_range(t, schedule, cfg)
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
        ramp = sigma_ramp(cfg.spacing, sigma_max, sigma_min, count, cfg.rho)
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


def flow_shifted(s: np.ndarray, shift: float) -> np.ndarray:
    """s' = S s / (1 + (S - 1) s): the flow shift, which is lambda -> lambda - ln S."""
    return shift * s / (1.0 + (shift - 1.0) * s)


def _lambda_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    """flow and EDM grids, placed in lambda over the schedule's range (a flow shift translates it).

    The sigma ramps (karras, exponential, beta) run in sigma-space sigma = e^-lambda, EDM's own
    sigma, so that one ramp is the same lambda grid on every process. The grid's sigma column
    is the process's own: s for flow, sigma for EDM.
    """
    n = cfg.steps
    lam_noisy, lam_clean = schedule.lambda_limits
    final_lam = np.inf if cfg.final_sigma == "zero" else lam_clean
    if cfg.spacing in ("linspace", "time-uniform"):
        # diffusers' flow grid: uniform in s from 1 - 1/T down to 0, then shifted
        top = (schedule.train_steps - 1) / schedule.train_steps
        column = flow_shifted(np.linspace(top, 0.0, n + 1), schedule.shift)
        lam = schedule.coefficients(column)[2]
        lam[-1] = final_lam
    elif cfg.spacing == "logsnr":
        lam = np.linspace(lam_noisy, lam_clean, n + 1)
        lam[-1] = final_lam
    elif cfg.spacing in ("karras", "exponential", "beta"):
        count = n if cfg.final_sigma == "zero" else n + 1
        ramp = sigma_ramp(cfg.spacing, float(np.exp(-lam_noisy)), float(np.exp(-lam_clean)), count, cfg.rho)
        lam = np.concatenate([-np.log(ramp[:n]), [final_lam]])
        lam[0] = lam_noisy  # pin the ends against round-off
        if count > 1:
            lam[count - 1] = lam_clean
    elif cfg.spacing == "custom" and cfg.timesteps is not None:
        lam = np.concatenate([schedule.lambda_at(np.asarray(cfg.timesteps, dtype=np.float64)), [final_lam]])
    else:  # custom sigmas, in the process's own sigma column
        lam = schedule.coefficients(np.asarray(cfg.sigmas, dtype=np.float64))[2]
        _check_custom_range(schedule, lam)
    sigmas = schedule.sigma_of(lam)
    timesteps = schedule.timestep_at(lam[:-1])
    return Grid(timesteps=np.asarray(timesteps, dtype=np.float64), sigmas=np.asarray(sigmas, dtype=np.float64))


def _check_custom_range(schedule: Schedule, lam: np.ndarray) -> None:
    """--sigmas of a flow or EDM grid: inside the range the network was trained on (a flow shift moves nothing here)."""
    lam_noisy, lam_clean = schedule.trained_limits
    bad = [float(v) for v in lam[:-1] if not (lam_noisy - 1e-9 <= v <= lam_clean + 1e-9)]
    if bad:
        lo, hi = schedule.sigma_of(np.array([lam_clean, lam_noisy]))
        value = float(schedule.sigma_of(bad[0]))
        raise ConfigError(
            f"--sigmas: {value:.6g} lies outside the schedule's range [{lo:.6g}, {hi:.6g}]; the model cannot be evaluated there"
        )


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
        first = int(dup[0])
        run = int(np.argmax(np.r_[ts[first:] != ts[first], True]))  # the steps at the first repeated timestep
        others = len(dup) - (run - 1)
        more = f"; {others} more repeat(s) later in the grid" if others else ""
        grid.warnings.append(
            f"grid: timestep {ts[first]:g} is used by {run} consecutive steps "
            f"(the model sees the same timestep at different sigmas){more}"
        )
    if len(grid.timesteps) == 0:
        raise ConfigError("grid: no steps left after removing zero-length steps; use fewer --steps")
