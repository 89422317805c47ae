"""Ground truth of a sweep: what ``compare`` scores each run against.

* The exact mixtures: the exact probability-flow ODE solution from the same x_T (cached on
  disk), and for SDE runs the distribution itself (MMD^2 against the mixture), the mean
  log-likelihood against its exact expectation, and a fine-step solution of the same SDE on the
  same Brownian path.
* Networks, which have no exact answer: many-step reference runs of the same model.

Both score a run with ``score(plan, final, noise_for, guidance_scale)`` and say what they did with
``describe()``. Nothing here prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .brownian import PATH_VERSION
from .config import SolverConfig
from .experiment import run_plan
from .metrics import log_likelihood_gap, mmd2_to_mixture, mode_flips
from .models import Denoiser, MixtureModel
from .plan import Plan, build_plan
from .reference import ReferenceCache, far_lambda, ode_limit
from .sampler import sample

REFERENCE_ORDER = 2  # the fine-step SDE reference: order 2, exact weights, logsnr grid
MIXTURE_REFERENCE_STEPS = 1000
NETWORK_REFERENCE_STEPS = 200


def median_l2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(median, maximum) of the per-sample L2 distances between two batches."""
    distance = (a.double() - b.double()).reshape(a.shape[0], -1).norm(dim=1)
    return distance.median().item(), distance.max().item()


class MixtureReferences:
    """Ground truth of a sweep on a mixture, computed once per distinct (kind, lambda range) and cached on disk."""

    def __init__(self, mixture, x_T: torch.Tensor, *, seed: int, bandwidth: float, reference_steps: int | None,
                 cache_dir: Path | None, cache_writable: bool = True):
        self.mixture, self.x_T = mixture, x_T.detach().double().cpu()
        self.seed, self.bandwidth, self.cache_dir = seed, bandwidth, cache_dir
        self.reference_steps = reference_steps or MIXTURE_REFERENCE_STEPS
        self.cache = ReferenceCache(cache_dir, writable=cache_writable)
        self.expect = dict(shape=tuple(self.x_T.shape), dtype=np.float64)  # what a cached reference must be
        self.memory: dict = {}
        self.fine_plans: dict = {}
        self._arrays = (mixture.weights, mixture.means, mixture.stds, self.x_T.numpy())

    def ode(self, plan: Plan) -> torch.Tensor:
        lam0, lam1 = float(plan.lambdas[0]), float(plan.lambdas[-1])
        description = {"kind": "ode", "lambda_start": lam0, "lambda_end": lam1, "rtol": 1e-10, "method": "DOP853"}
        if not math.isfinite(lam1):
            description["lambda_far"] = far_lambda(self.mixture, lam0)
        process = plan.schedule
        if process.process != "vp":
            description["process"] = process.process  # (VP keeps its old descriptions: cached entries stay valid)
        key = ("ode", process.process, lam0, lam1)
        if key not in self.memory:
            self.memory[key] = self.cache.get_or_compute(
                description, self._arrays, lambda: ode_limit(self.mixture, self.x_T, lam0, lam1, process=process), **self.expect
            )
        return self.memory[key]

    def sde(self, plan: Plan, noise_for: Callable) -> torch.Tensor:
        cfg = plan.config
        fine_cfg = cfg.with_options(
            order=REFERENCE_ORDER, coefficients="exact", steps=self.reference_steps, spacing="logsnr",
            lower_order_final=False, euler_at_final=False, compat="none", sigmas=None, timesteps=None, method="multistep",
            startup="lower-order", nfe=None, final_sigma="zero" if plan.sigmas[-1] == 0 else "sigma-min",
        )
        if fine_cfg not in self.fine_plans:
            self.fine_plans[fine_cfg] = build_plan(fine_cfg)
        fine = self.fine_plans[fine_cfg]
        lam0, lam1 = float(fine.lambdas[0]), float(fine.lambdas[-1])
        description = {
            "kind": "sde", "path_version": PATH_VERSION, "seed": self.seed,
            "lambda_start": lam0, "lambda_end": lam1, "config": fine_cfg.to_dict(),
            "trained_betas": None if cfg.trained_betas is None else list(cfg.trained_betas),
        }
        key = ReferenceCache.key(description)
        if key not in self.memory:

            def compute():
                denoise = MixtureModel(self.mixture).bind(fine)
                return sample(fine, denoise, self.x_T.clone(), noise_for(fine)).samples

            self.memory[key] = self.cache.get_or_compute(description, self._arrays, compute, **self.expect)
        return self.memory[key]

    def score(self, plan: Plan, final: torch.Tensor, noise_for: Callable, guidance_scale: float | None = None) -> dict:
        """The run's error columns (a mixture is not guided: ``guidance_scale`` is always None)."""
        row = {"log_likelihood_gap": log_likelihood_gap(final, self.mixture)["gap"]}
        if plan.config.is_sde:
            row["mmd2"] = mmd2_to_mixture(final, self.mixture, self.bandwidth)["mmd2"]
            reference = self.sde(plan, noise_for)
            row["strong_error"] = median_l2(final, reference)[0]
            row["error"], row["error_metric"] = row["mmd2"], "mmd2"
        else:
            reference = self.ode(plan)
            row["error"], row["error_max"] = median_l2(final, reference)
            row["error_metric"] = "l2_median"
        row["mode_flips"] = mode_flips(final, reference, self.mixture)
        return row

    def describe(self) -> dict:
        return {
            "kind": "exact",
            "ode": "exact probability-flow ODE solution from the same x_T (scipy DOP853, rtol 1e-10); "
            "error = median per-sample L2 distance",
            "sde": f"distribution: MMD^2 against the exact mixture (Gaussian kernel, bandwidth {self.bandwidth:.6g}); "
            f"strong error: median L2 distance to a {self.reference_steps}-step order-{REFERENCE_ORDER} exact-weight "
            "solution of the same SDE on the same Brownian path",
            "bandwidth": self.bandwidth,
            "reference_steps": self.reference_steps,
            "cache": None if self.cache_dir is None else str(self.cache_dir),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
        }


class ReferenceRuns:
    """Ground truth for a network, which has no exact answer: reference runs of the same model.

    ODE runs are measured against a many-step run of an exact-weight third-order solver (with
    the singlestep start-up, so it keeps order 3) from the same x_T over the same lambda range;
    SDE runs against a many-step order-2 exact-weight run of the same SDE on the same Brownian
    path. Both grids are uniform in lambda. They are computed in this process, not cached on
    disk (a network's identity is not hashed), once per grid and guidance scale.
    """

    def __init__(self, model: Denoiser, x_T: torch.Tensor, steps: int):
        self.model, self.x_T, self.steps = model, x_T, steps
        self.memory: dict = {}
        self.nfe = 0

    def _grid(self, plan: Plan) -> tuple[float, ...]:
        first, last = float(plan.sigmas[0]), float(plan.sigmas[-1])
        points = self.steps + 1 if last > 0 else self.steps
        schedule = plan.schedule
        if schedule.process == "vp":
            # sigma 0 is lambda = inf: go uniformly to the schedule's smallest sigma, then one step to 0
            low = last if last > 0 else float(np.exp(-np.max(schedule.lambdas[np.isfinite(schedule.lambdas)])))
            sigmas = np.exp(-np.linspace(-np.log(first), -np.log(low), points))
        else:
            lam_last = float(plan.lambdas[-1]) if last > 0 else schedule.lambda_limits[1]
            sigmas = schedule.sigma_of(np.linspace(float(plan.lambdas[0]), lam_last, points))
        return tuple(float(v) for v in sigmas) + (() if last > 0 else (0.0,))

    def _run(self, key: tuple, config: SolverConfig, noise_for: Callable | None, guidance_scale: float | None) -> torch.Tensor:
        key = (*key, self.model.guidance_scale if guidance_scale is None else guidance_scale)
        if key not in self.memory:
            fine = build_plan(config)
            denoise = self.model.bind(fine, guidance_scale)
            result = run_plan(fine, denoise, self.x_T.clone(), None if noise_for is None else noise_for(fine))
            self.nfe += result.nfe
            self.memory[key] = result.samples.detach().double().cpu()
        return self.memory[key]

    def reference(self, plan: Plan, noise_for: Callable, guidance_scale: float | None = None) -> torch.Tensor:
        """The reference run for ``plan``'s lambda range at ``guidance_scale`` (None: the model's own)."""
        cfg = plan.config
        grid = self._grid(plan)
        common = dict(sigmas=grid, timesteps=None, steps=len(grid) - 1, coefficients="exact", method="multistep", compat="none",
                      lower_order_final=False, euler_at_final=False, nfe=None)
        if cfg.is_sde:
            fine = cfg.with_options(order=REFERENCE_ORDER, startup="lower-order", **common)
            return self._run(("sde", cfg.algo, grid), fine, noise_for, guidance_scale)
        fine = cfg.with_options(algo="dpmsolver++", order=3, startup="singlestep", **common)
        return self._run(("ode", grid), fine, None, guidance_scale)

    def score(self, plan: Plan, final: torch.Tensor, noise_for: Callable, guidance_scale: float | None = None) -> dict:
        reference = self.reference(plan, noise_for, guidance_scale)
        error, worst = median_l2(final, reference)
        row = {"error": error, "error_max": worst, "error_metric": "l2_median_vs_reference"}
        if plan.config.is_sde:
            row["strong_error"] = error
        return row

    def describe(self) -> dict:
        return {
            "kind": "reference run",
            "ode": f"reference run: {self.steps}-step dpmsolver++ order 3 (exact weights, singlestep start-up, uniform "
            "in lambda) of the same model from the same x_T; error = median per-sample L2 distance",
            "sde": f"reference run: {self.steps}-step order-{REFERENCE_ORDER} exact-weight solution of the same SDE on the "
            "same Brownian path; error = median per-sample L2 distance (strong error)",
            "reference_steps": self.steps,
            "reference_nfe": self.nfe,
            "cache": None,
        }
