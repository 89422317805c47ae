"""``--compat diffusers``: the step weights of diffusers' DPMSolverMultistepScheduler.

diffusers evaluates its coefficients in float32 from float32 sigmas, with its own
third-order weights (for sde-dpmsolver++ a D2 weight that differs from the published one by
-alpha_t, see docs/mathematics.md). This module repeats that arithmetic in float32 and hands
the results to the plan as the usual linear weights, so compat runs go through the same
update as every other run.
"""

from __future__ import annotations

import numpy as np

from .coefficients import differences_to_linear
from .config import SolverConfig

f32 = np.float32


def _vp32(sigma: float):
    s = f32(sigma)
    alpha = f32(1.0) / np.sqrt(s * s + f32(1.0))
    sig = s * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sig)
    return alpha, sig, lam


def diffusers_step_weights(cfg: SolverConfig, sigmas: np.ndarray, i: int, order: int):
    """(a, b, c, alpha_s, sigma_s) of step i exactly as diffusers computes them (float32)."""
    alpha_t, sigma_t, lam_t = _vp32(sigmas[i + 1])
    alpha_s, sigma_s, lam_s = _vp32(sigmas[i])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = lam_t - lam_s
        one, two, half = f32(1.0), f32(2.0), f32(0.5)
        em, ep = np.exp(-h), np.exp(h)
        e2 = np.exp(f32(-2.0) * h)
        algo, heun = cfg.algo, cfg.solver_type == "heun"
        c = f32(0.0)
        if algo == "dpmsolver++":
            a = sigma_t / sigma_s
            w0 = -(alpha_t * (em - one))
            w1_mid, w1_heun = -half * (alpha_t * (em - one)), alpha_t * ((em - one) / h + one)
            w2 = -(alpha_t * ((em - one + h) / h**2 - half))
        elif algo == "dpmsolver":
            a = alpha_t / alpha_s
            w0 = -(sigma_t * (ep - one))
            w1_mid, w1_heun = -half * (sigma_t * (ep - one)), -(sigma_t * ((ep - one) / h - one))
            w2 = -(sigma_t * ((ep - one - h) / h**2 - half))
        elif algo == "sde-dpmsolver++":
            a = sigma_t / sigma_s * em
            w0 = alpha_t * (one - e2)
            w1_mid, w1_heun = half * (alpha_t * (one - e2)), alpha_t * ((one - e2) / (f32(-2.0) * h) + one)
            w2 = alpha_t * ((one - e2 - two * h) / (two * h) ** 2 - half)
            c = sigma_t * np.sqrt(one - e2)
        else:  # sde-dpmsolver (no third order in diffusers; validation refuses it)
            a = alpha_t / alpha_s
            w0 = -two * (sigma_t * (ep - one))
            w1_mid, w1_heun = -(sigma_t * (ep - one)), -two * (sigma_t * ((ep - one) / h - one))
            w2 = f32(0.0)
            c = sigma_t * np.sqrt(np.exp(two * h) - one)
        if order == 1:
            b = [float(w0)]
        else:
            lam_1 = _vp32(sigmas[i - 1])[2]
            r0 = float((lam_s - lam_1) / h)
            if order == 2:
                b = differences_to_linear(2, float(w0), float(w1_heun if heun else w1_mid), 0.0, r0, 1.0)
            else:
                lam_2 = _vp32(sigmas[i - 2])[2]
                r1 = float((lam_1 - lam_2) / h)
                # diffusers' third order always uses the heun-form D1 weight.
                b = differences_to_linear(3, float(w0), float(w1_heun), float(w2), r0, r1)
    return float(a), tuple(b), float(c), float(alpha_s), float(sigma_s)
