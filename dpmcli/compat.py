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
f64 = np.float64


def _vp32(sigma: float):
    s = f32(sigma)
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
    alpha_t, sigma_t, lam_t = _vp32(sigmas[i + 1])
    alpha_s, sigma_s, lam_s = _vp32(sigmas[i])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = lam_t - lam_s
        a, w0, w1_mid, w1_heun, w2, c = _terms32(cfg.algo, alpha_t, sigma_t, alpha_s, sigma_s, h)
        # IEEE arithmetic throughout (numpy floats, not Python's): a zero-length step (h = 0, as
        # diffusers' grids can have) gives the Inf/NaN weights diffusers computes, not an exception;
        # the plan marks such a row and stepping it raises a NumericalError.
        if order == 1:
            b = [f64(w0)]
        else:
            lam_1 = _vp32(sigmas[i - 1])[2]
            r0 = f64((lam_s - lam_1) / h)
            if order == 2:
                w1 = w1_heun if cfg.solver_type == "heun" else w1_mid
                b = differences_to_linear(2, f64(w0), f64(w1), f64(0.0), r0, f64(1.0))
            else:
                lam_2 = _vp32(sigmas[i - 2])[2]
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
    alpha_t, sigma_t, lam_t = _vp32(sigmas[i + 1])
    alpha_a, sigma_a, lam_a = _vp32(sigmas[anchor])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = lam_t - lam_a
        a, w0, w1_mid, w1_heun, w2, c = _terms32(cfg.algo, alpha_t, sigma_t, alpha_a, sigma_a, h)
        heun = cfg.solver_type == "heun"
        if order == 1:
            b = [f64(w0)]
        elif order == 2:
            r0 = f64((_vp32(sigmas[i])[2] - lam_a) / h)
            w1 = f64(w1_heun if heun else w1_mid)
            b = [w1 / r0, f64(w0) - w1 / r0]
        else:
            r0 = f64((_vp32(sigmas[i])[2] - lam_a) / h)
            r1 = f64((_vp32(sigmas[i - 1])[2] - lam_a) / h)
            if heun:
                on_d10 = (f64(w1_heun) * r0 - 2.0 * f64(w2)) / (r0 - r1)  # D1_0 = (m1 - m2) / r1
                on_d11 = (2.0 * f64(w2) - f64(w1_heun) * r1) / (r0 - r1)  # D1_1 = (m0 - m2) / r0
            else:  # midpoint: the linear term through the anchor and the last point only
                on_d10, on_d11 = f64(0.0), f64(w1_heun)
            b = [on_d11 / r0, on_d10 / r1, f64(w0) - on_d11 / r0 - on_d10 / r1]
    return float(a), tuple(float(v) for v in b), float(c)
