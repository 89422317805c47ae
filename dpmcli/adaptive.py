"""Adaptive step size: DPM-Solver's embedded pairs (DPM-Solver-12 and -23) with a step controller.

Each attempt from lambda_s goes a step h: a lower-order singlestep update and a higher-order
one that reuses its model calls (order 2: DPM-Solver-1 and -2 with the node at h/2; order 3:
DPM-Solver-2 and -3 with nodes at h/3 and 2h/3). Their difference, scaled by
``max(atol, rtol * max(|x_lower|, |x_prev|))`` and measured as the largest per-sample RMS, is
the error estimate E. The step is accepted when E <= 1; either way the next h is
``theta * h * E^(-1/order)``, capped at the distance left. The model output at lambda_s is
reused after a rejection (x has not moved), so NFE counts only real model calls.

The weights of every update are the plan's (``rows.update_weights``: the same exact and
published-midpoint rules, the same conversion of the model output); what is this module's own
is the controller, and the arithmetic that applies the weights, kept as it was so that a run
writes the same numbers (the plan's fused ``solvers.step`` rounds differently).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .coefficients import algo_form
from .errors import NumericalError
from .plan import Plan
from .rows import Rule, update_weights
from .sampler import RunResult, StepEvent

H_INIT = 0.05  # first step in lambda
MAX_ATTEMPTS = 20_000  # a controller still stepping after this many attempts is stuck
THETA = 0.9  # safety factor of the controller
LAMBDA_TOL = 1e-5  # done when this close to the end


class _Model:
    """The model at a lambda, counting calls."""

    def __init__(self, plan: Plan, model: Callable):
        self.plan, self.model, self.calls = plan, model, 0
        form = algo_form(plan.config.algo)
        self.data = form.data

    def __call__(self, x: torch.Tensor, lam: float):
        schedule = self.plan.schedule
        alpha, sigma = schedule.alpha_sigma(lam)
        timestep = float(schedule.timestep_at(lam))
        scale = schedule.input_scale(sigma)
        out = self.model(x if scale == 1.0 else x * scale, timestep)
        self.calls += 1
        p, q = schedule.conversion(self.data, self.plan.config.prediction_type, alpha, sigma)
        m = out * q if p == 0.0 else x * p + out * q
        return m, out


def _update(plan: Plan, x: torch.Tensor, lam_s: float, lam_t: float, outputs: list[tuple[float, torch.Tensor]], rule: Rule):
    """x at lam_t from x at lam_s with the polynomial through ``outputs`` ((lambda, m) pairs)."""
    a, weights, _ = update_weights(
        algo_form(plan.config.algo), rule, lam_s, lam_t, [lam for lam, _ in outputs], noise_level=plan.schedule.alpha_sigma
    )
    result = x * a
    for w, (_, m) in zip(weights, outputs):
        result = result + w * m
    return result


def sample_adaptive(plan: Plan, model: Callable, x: torch.Tensor, callbacks=(), check_finite: bool = True) -> RunResult:
    cfg = plan.config
    order = cfg.order
    exact = cfg.coefficients == "exact"
    pair = Rule.EXACT if exact else Rule.MIDPOINT  # the second-order update of a pair
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # the solver arithmetic runs in float32 at least; the result is cast back
    lam_start = float(plan.lambdas[0])
    lam_end = plan.schedule.lambda_limits[1]
    calls = _Model(plan, model)
    start = time.perf_counter()
    h = H_INIT
    lam_s = lam_start
    x_prev = x
    attempts: list[dict] = []
    cached = None  # (m_s, out_s) at lam_s, valid while x has not moved
    accepted = 0
    while lam_end - lam_s > LAMBDA_TOL:
        if len(attempts) >= MAX_ATTEMPTS:
            raise NumericalError(
                f"adaptive: {MAX_ATTEMPTS} attempted steps and still at lambda {lam_s:.6g} of {lam_end:.6g}; "
                "the tolerances are too tight for this precision, loosen --atol/--rtol"
            )
        lam_t = min(lam_s + h, lam_end)
        step = lam_t - lam_s
        if cached is None:
            cached = calls(x, lam_s)
        m_s, out_s = cached
        if order == 2:
            lam_1 = lam_s + 0.5 * step
            x_lower = _update(plan, x, lam_s, lam_t, [(lam_s, m_s)], Rule.EXACT)
            u1 = _update(plan, x, lam_s, lam_1, [(lam_s, m_s)], Rule.EXACT)
            m_1, _ = calls(u1, lam_1)
            x_higher = _update(plan, x, lam_s, lam_t, [(lam_s, m_s), (lam_1, m_1)], pair)
        else:
            lam_1, lam_2 = lam_s + step / 3.0, lam_s + 2.0 * step / 3.0
            u1 = _update(plan, x, lam_s, lam_1, [(lam_s, m_s)], Rule.EXACT)
            m_1, _ = calls(u1, lam_1)
            x_lower = _update(plan, x, lam_s, lam_t, [(lam_s, m_s), (lam_1, m_1)], pair)
            u2 = _update(plan, x, lam_s, lam_2, [(lam_s, m_s), (lam_1, m_1)], Rule.EXACT)
            m_2, _ = calls(u2, lam_2)
            finals = [(lam_s, m_s), (lam_1, m_1), (lam_2, m_2)] if exact else [(lam_s, m_s), (lam_2, m_2)]
            x_higher = _update(plan, x, lam_s, lam_t, finals, Rule.EXACT)
        delta = torch.maximum(torch.full_like(x_lower, cfg.atol), cfg.rtol * torch.maximum(x_lower.abs(), x_prev.abs()))
        scaled = ((x_higher - x_lower) / delta).reshape(x.shape[0], -1)
        error = scaled.pow(2).mean(dim=1).sqrt().max().item()
        if check_finite and not math.isfinite(error):
            bad = "the update contains NaN or Inf" if not bool(torch.isfinite(x_higher).all()) else "the error estimate overflows (tolerances too tight)"
            raise NumericalError(f"adaptive step at lambda {lam_s:.6g} (h {step:.3g}): {bad}")
        ok = error <= 1.0
        attempts.append({"lambda": lam_s, "h": step, "error": error, "accepted": ok, "nfe": calls.calls})
        if ok:
            info = _info(plan, accepted, lam_s, step, order)
            event = StepEvent(plan, None, x, out_s, x_higher, info, data_prediction_at(plan, x, out_s, lam_s))
            for callback in callbacks:
                callback(event)
            accepted += 1
            lam_s, x_prev, x = lam_t, x_lower, x_higher
            cached = None
        h = min(THETA * step * max(error, 1e-10) ** (-1.0 / order), lam_end - lam_s) if lam_end - lam_s > LAMBDA_TOL else h
    if plan.sigmas[-1] == 0.0:
        # final sigma 0: one last first-order step, which returns the data prediction
        m_s, out_s = calls(x, lam_s)
        x0 = data_prediction_at(plan, x, out_s, lam_s)
        info = _info(plan, accepted, lam_s, math.inf, 1)
        for callback in callbacks:
            callback(StepEvent(plan, None, x, out_s, x0, info, x0))
        x = x0
    return RunResult(samples=x.to(dtype), nfe=calls.calls, seconds=time.perf_counter() - start, attempts=attempts)


def _info(plan: Plan, step: int, lam: float, h: float, order: int) -> dict:
    """The per-step columns (as ``Plan.eval_row``) of an accepted step starting at lambda."""
    alpha, sigma = plan.schedule.alpha_sigma(lam)
    return {
        "step": step, "stage": 0, "timestep": float(plan.schedule.timestep_at(lam)), "sigma": float(plan.schedule.sigma_of(lam)),
        "alpha_t": alpha, "sigma_t": sigma, "lambda": lam, "h": h, "order": order,
    }


def data_prediction_at(plan: Plan, x: torch.Tensor, out: torch.Tensor, lam: float) -> torch.Tensor:
    alpha, sigma = plan.schedule.alpha_sigma(lam)
    x0_p, x0_q = plan.schedule.conversion(True, plan.config.prediction_type, alpha, sigma)
    return out * x0_q if x0_p == 0.0 else x * x0_p + out * x0_q
