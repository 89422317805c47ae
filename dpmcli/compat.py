"""``--compat diffusers``: the step grid and the step weights of diffusers' DPMSolverMultistepScheduler.

diffusers evaluates its coefficients in float32 from float32 sigmas, with its own
third-order weights (for sde-dpmsolver++ a D2 weight that differs from the published one by
-alpha_t, see docs/mathematics.md). This module repeats that arithmetic in float32 and hands
the results to the plan as the usual linear weights, so compat runs go through the same
update as every other run.
"""

from __future__ import annotations

import numpy as np
import torch

from .coefficients import differences_to_linear
from .config import SolverConfig
from .grid import Grid, check_timestep_range, integer_timesteps, sigma_ramp, top_timestep
from .schedule import Schedule

f32 = np.float32
f64 = np.float64


def alpha_sigma32(sigma: float, process: str = "vp"):
    """diffusers' float32 (alpha_t, sigma_t, lambda) of its sigma: VP, flow (alpha = 1 - s) or EDM (alpha = 1)."""
    s = f32(sigma)
    if process == "flow":
        alpha, sig = f32(1.0) - s, s
    elif process == "edm":
        alpha, sig = f32(1.0), s
    else:
        alpha = f32(1.0) / np.sqrt(s * s + f32(1.0))
        sig = s * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sig)
    return alpha, sig, lam


def _terms32(algo: str, alpha_t, sigma_t, alpha_a, sigma_a, h):
    """diffusers' float32 pieces of a step of length h: (a, W0, W1 midpoint, W1 heun, W2, c)."""
    one, two, half = f32(1.0), f32(2.0), f32(0.5)
    em, ep, e2 = np.exp(-h), np.exp(h), np.exp(f32(-2.0) * h)
    c = f32(0.0)
    if algo == "dpmsolver++":
        a = sigma_t / sigma_a
        w0 = -(alpha_t * (em - one))
        w1_mid, w1_heun = -half * (alpha_t * (em - one)), alpha_t * ((em - one) / h + one)
        w2 = -(alpha_t * ((em - one + h) / h**2 - half))
    elif algo == "dpmsolver":
        a = alpha_t / alpha_a
        w0 = -(sigma_t * (ep - one))
        w1_mid, w1_heun = -half * (sigma_t * (ep - one)), -(sigma_t * ((ep - one) / h - one))
        w2 = -(sigma_t * ((ep - one - h) / h**2 - half))
    elif algo == "sde-dpmsolver++":
        a = sigma_t / sigma_a * em
        w0 = alpha_t * (one - e2)
        w1_mid, w1_heun = half * (alpha_t * (one - e2)), alpha_t * ((one - e2) / (f32(-2.0) * h) + one)
        w2 = alpha_t * ((one - e2 - two * h) / (two * h) ** 2 - half)  # diffusers' sign: see docs/mathematics.md
        c = sigma_t * np.sqrt(one - e2)
    else:  # sde-dpmsolver (no third order in diffusers; validation refuses it)
        a = alpha_t / alpha_a
        w0 = -two * (sigma_t * (ep - one))
        w1_mid, w1_heun = -(sigma_t * (ep - one)), -two * (sigma_t * ((ep - one) / h - one))
        w2 = f32(0.0)
        c = sigma_t * np.sqrt(np.exp(two * h) - one)
    return a, w0, w1_mid, w1_heun, w2, c


def diffusers_step_weights(cfg: SolverConfig, sigmas: np.ndarray, i: int, order: int):
    """(a, b, c, alpha_s, sigma_s) of step i exactly as diffusers' multistep scheduler computes them (float32)."""
    alpha_t, sigma_t, lam_t = alpha_sigma32(sigmas[i + 1], cfg.process)
    alpha_s, sigma_s, lam_s = alpha_sigma32(sigmas[i], cfg.process)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = lam_t - lam_s
        a, w0, w1_mid, w1_heun, w2, c = _terms32(cfg.algo, alpha_t, sigma_t, alpha_s, sigma_s, h)
        # IEEE arithmetic throughout (numpy floats, not Python's): a zero-length step (h = 0, as
        # diffusers' grids can have) gives the Inf/NaN weights diffusers computes, not an exception;
        # the plan marks such a row and stepping it raises a NumericalError.
        if order == 1:
            b = [f64(w0)]
        else:
            lam_1 = alpha_sigma32(sigmas[i - 1], cfg.process)[2]
            r0 = f64((lam_s - lam_1) / h)
            if order == 2:
                w1 = w1_heun if cfg.solver_type == "heun" else w1_mid
                b = differences_to_linear(2, f64(w0), f64(w1), f64(0.0), r0, f64(1.0))
            else:
                lam_2 = alpha_sigma32(sigmas[i - 2], cfg.process)[2]
                r1 = f64((lam_1 - lam_2) / h)
                # diffusers' third order always uses the heun-form D1 weight.
                b = differences_to_linear(3, f64(w0), f64(w1_heun), f64(w2), r0, r1)
    return float(a), tuple(float(v) for v in b), float(c), float(alpha_s), float(sigma_s)


def diffusers_singlestep_orders(cfg: SolverConfig, steps: int) -> list[int]:
    """DPMSolverSinglestepScheduler's order per grid point (its get_order_list, quirks included)."""
    order = cfg.order
    lower = cfg.lower_order_final or steps % order != 0 or cfg.final_sigma == "zero"  # diffusers forces it on then
    if order == 1:
        orders = [1] * steps
    elif not lower:
        orders = [1, 2, 3][:order] * (steps // order)
    elif order == 2:
        orders = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
    elif steps % 3 == 0:
        orders = [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1]
    elif steps % 3 == 1:
        orders = [1, 2, 3] * (steps // 3) + [1]
    else:
        orders = [1, 2, 3] * (steps // 3) + [1, 2]
    if cfg.final_sigma == "zero":
        orders[-1] = 1
    return orders


def diffusers_singlestep_weights(cfg: SolverConfig, sigmas: np.ndarray, i: int, order: int):
    """(a, b, c) of grid point i as DPMSolverSinglestepScheduler computes them (float32).

    Its "singlestep" reuses grid points: a group of ``order`` grid points is one step from the
    group's first point (the anchor), the later points serving as the intermediate nodes. ``b``
    weighs the model outputs of points i, i-1, ..., i-order+1 (the anchor last).
    """
    anchor = i - order + 1
    alpha_t, sigma_t, lam_t = alpha_sigma32(sigmas[i + 1], cfg.process)
    alpha_a, sigma_a, lam_a = alpha_sigma32(sigmas[anchor], cfg.process)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = lam_t - lam_a
        a, w0, w1_mid, w1_heun, w2, c = _terms32(cfg.algo, alpha_t, sigma_t, alpha_a, sigma_a, h)
        heun = cfg.solver_type == "heun"
        if order == 1:
            b = [f64(w0)]
        elif order == 2:
            r0 = f64((alpha_sigma32(sigmas[i], cfg.process)[2] - lam_a) / h)
            w1 = f64(w1_heun if heun else w1_mid)
            b = [w1 / r0, f64(w0) - w1 / r0]
        else:
            r0 = f64((alpha_sigma32(sigmas[i], cfg.process)[2] - lam_a) / h)
            r1 = f64((alpha_sigma32(sigmas[i - 1], cfg.process)[2] - lam_a) / h)
            if heun:
                on_d10 = (f64(w1_heun) * r0 - 2.0 * f64(w2)) / (r0 - r1)  # D1_0 = (m1 - m2) / r1
                on_d11 = (2.0 * f64(w2) - f64(w1_heun) * r1) / (r0 - r1)  # D1_1 = (m0 - m2) / r0
            else:  # midpoint: the linear term through the anchor and the last point only
                on_d10, on_d11 = f64(0.0), f64(w1_heun)
            b = [on_d11 / r0, on_d10 / r1, f64(w0) - on_d11 / r0 - on_d10 / r1]
    return float(a), tuple(float(v) for v in b), float(c)


# --------------------------------------------------------------------------- the grid


def diffusers_karras(sigma_max: float, sigma_min: float, count: int, rho: float = 7.0) -> np.ndarray:
    """diffusers' own Karras arithmetic (rho = 7 there, where powers are safe), to the last bit."""
    ramp = np.linspace(0.0, 1.0, count)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def diffusers_sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Timestep of each sigma by linear interpolation in log sigma, clamped to the table (as diffusers)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    low = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def diffusers_flow_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    """diffusers' flow grid (use_flow_sigmas, both DPM-Solver schedulers): s uniform from 1 - 1/T, shifted, N points
    then 0; float32 sigmas, timesteps T s truncated to int64."""
    count = cfg.train_steps
    # diffusers sets flow_shift = np.exp(mu) (numpy's exp, kept for the last bit)
    shift = float(np.exp(cfg.flow_mu)) if cfg.flow_mu is not None else cfg.flow_shift
    unshifted = 1.0 - np.linspace(1.0, 1.0 / count, cfg.steps + 1)
    sigmas = np.flip(shift * unshifted / (1 + (shift - 1) * unshifted))[:-1].copy()
    timesteps = (sigmas * count).astype(np.int64).astype(np.float64)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32).astype(np.float64)
    return Grid(timesteps=timesteps, sigmas=sigmas)


def diffusers_edm_grid(cfg: SolverConfig) -> Grid:
    """EDMDPMSolverMultistepScheduler.set_timesteps: a float32 karras or exponential ramp of N sigmas, c_noise
    timesteps, then sigma_min or 0."""
    ramp = torch.linspace(0, 1, cfg.steps)
    if cfg.spacing == "karras":
        lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
        sigmas = (hi + ramp * (lo - hi)) ** cfg.rho
    else:
        sigmas = torch.linspace(np.log(cfg.sigma_min), np.log(cfg.sigma_max), cfg.steps).exp().flip(0)
    sigmas = sigmas.to(torch.float32)
    timesteps = (0.25 * torch.log(sigmas)).double().numpy()
    final = torch.tensor([0.0 if cfg.final_sigma == "zero" else cfg.sigma_min], dtype=torch.float32)
    return Grid(timesteps=timesteps, sigmas=torch.cat([sigmas, final]).double().numpy())


def diffusers_grid(schedule: Schedule, cfg: SolverConfig) -> Grid:
    """The grid of DPMSolverMultistepScheduler.set_timesteps, quirks included: integer timesteps, float32 sigmas,
    N sigma points then the final one (flow and EDM: their own schedulers' grids)."""
    if cfg.process == "flow":
        return diffusers_flow_grid(schedule, cfg)
    if cfg.process == "edm":
        return diffusers_edm_grid(cfg)
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
        check_timestep_range(timesteps, schedule, cfg, count=count)
        if len(timesteps) != n:
            warnings.append(f"grid: diffusers' {cfg.spacing} spacing gives {len(timesteps)} timesteps for --steps {n}; running {len(timesteps)}")
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    elif cfg.spacing == "logsnr":
        # diffusers' use_lu_lambdas: uniform in log sigma over N points.
        ramp = np.linspace(0.0, 1.0, n)
        hi, lo = float(log_sigmas[-1]), float(log_sigmas[0])
        sigmas = np.exp(hi + ramp * (lo - hi))
        timesteps = diffusers_sigma_to_t(sigmas, log_sigmas)
        timesteps = timesteps.round() if rounds else timesteps
    else:
        sigma_max, sigma_min = float(train_sigmas[-1]), float(train_sigmas[0])
        sigmas = diffusers_karras(sigma_max, sigma_min, n) if cfg.spacing == "karras" else sigma_ramp(cfg.spacing, sigma_max, sigma_min, n, 7.0)
        timesteps = diffusers_sigma_to_t(sigmas, log_sigmas)
        if cfg.spacing == "karras" and rounds:
            timesteps = timesteps.round()
    final = 0.0 if cfg.final_sigma == "zero" else float(train_sigmas[0])
    sigmas = np.concatenate([sigmas, [final]]).astype(np.float32).astype(np.float64)
    # diffusers stores timesteps as int64: fractional ones are truncated, not rounded.
    timesteps = np.asarray(timesteps).astype(np.int64).astype(np.float64)
    return Grid(timesteps=timesteps, sigmas=sigmas, warnings=warnings)
