"""Ground truth of a sweep: what ``compare`` scores each run against.

* The exact mixtures: the exact probability-flow ODE solution from the same x_T (cached on
  disk), and for SDE runs the distribution itself (MMD^2 against the mixture), the mean
  log-likelihood against its exact expectation, and a fine-step solution of the same SDE on the
  same Brownian path.
* Networks, which have no exact answer: many-step reference runs of the same model (cached on
  disk too when the model states its identity: its weights by content, its conditioning).

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
from .distributed import SINGLE, Ranks, cached_across, run_split, split_rows
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
                 cache_dir: Path | None, cache_writable: bool = True, ranks: Ranks = SINGLE):
        self.mixture, self.x_T, self.ranks = mixture, x_T.detach().double().cpu(), ranks
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
            def solve(x):
                return ode_limit(self.mixture, x, lam0, lam1, process=process)

            self.memory[key] = cached_across(
                self.ranks, self.cache, description, self._arrays, lambda: split_rows(self.ranks, solve, self.x_T), **self.expect
            )
        return self.memory[key]

    def sde(self, plan: Plan, noise_for: Callable) -> torch.Tensor:
        cfg = plan.config.sde_config()
        fine_cfg = cfg.with_options(
            order=REFERENCE_ORDER, coefficients="exact", steps=self.reference_steps, spacing="logsnr",
            lower_order_final=False, euler_at_final=False, compat="none", sigmas=None, timesteps=None, method="multistep",
            startup="lower-order", nfe=None, corrector="none", final_decay=0.0, final_sigma="zero" if plan.sigmas[-1] == 0 else "sigma-min",
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
                return run_split(self.ranks, lambda x, noise, first: sample(fine, denoise, x, noise), self.x_T, noise_for(fine)).samples

            self.memory[key] = cached_across(self.ranks, self.cache, description, self._arrays, compute, **self.expect)
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
    path. Both grids are uniform in lambda. Each is computed once per grid and guidance scale in
    this process, and cached on disk in ``cache_dir`` (None: not cached) when the model states
    its ``identity()``: the key holds that identity (weights by content, conditioning, dtype,
    device kind), the reference plan's config, the guidance scale, the reference steps and x_T,
    and for SDE runs the seed of the Brownian path (without ``seed`` SDE references are not
    cached). ``cache_writable=False`` reads the cache and stores nothing.
    """

    def __init__(self, model: Denoiser, x_T: torch.Tensor, steps: int, *, ranks: Ranks = SINGLE, seed: int | None = None,
                 cache_dir: Path | None = None, cache_writable: bool = True):
        self.model, self.x_T, self.steps, self.ranks, self.seed = model, x_T, steps, ranks, seed
        self.memory: dict = {}
        self.nfe = 0
        # rank 0's answer for the job: a rank that cannot hash the weights must not take another path
        self.identity = None if cache_dir is None else ranks.from_writer(model.identity() if ranks.writer else None)
        self.cache_dir = None if self.identity is None else Path(cache_dir)
        # why a cache folder was given but is not used, else None (describe() says it)
        self.uncached = None
        if cache_dir is not None and self.identity is None:
            self.uncached = f"model {model.name!r} cannot say what it is (its weights are not hashed): reference runs are not cached"
        self.cache = ReferenceCache(self.cache_dir, writable=cache_writable)
        self.expect = dict(shape=tuple(x_T.shape), dtype=np.float64)  # what a cached reference must be
        self._arrays = () if self.cache_dir is None else (x_T.detach().to("cpu", torch.float64).numpy(),)

    def _description(self, kind: str, config: SolverConfig, scale: float | None) -> dict | None:
        """What a reference run depends on, for its cache key (None: it is not cached)."""
        if self.cache_dir is None or (kind == "sde" and self.seed is None):
            return None
        description = {
            "kind": f"network-{kind}", "model": self.identity, "reference_steps": self.steps, "guidance_scale": scale,
            "config": config.to_dict(), "trained_betas": None if config.trained_betas is None else list(config.trained_betas),
            "latents": {"dtype": str(self.x_T.dtype).replace("torch.", ""), "device": self.x_T.device.type},
        }
        if kind == "sde":
            description.update(seed=self.seed, path_version=PATH_VERSION)
        return description

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
            # (a compat grid's float32 first sigma can lie a hair outside the schedule's range)
            lam_first = max(float(plan.lambdas[0]), schedule.lambda_limits[0])
            sigmas = schedule.sigma_of(np.linspace(lam_first, lam_last, points))
        return tuple(float(v) for v in sigmas) + (() if last > 0 else (0.0,))

    def _run(self, key: tuple, config: SolverConfig, noise_for: Callable | None, guidance_scale: float | None) -> torch.Tensor:
        scale = self.model.guidance_scale if guidance_scale is None else guidance_scale
        key = (*key, scale)
        if key in self.memory:
            return self.memory[key]

        def compute() -> torch.Tensor:
            fine = build_plan(config)
            def run(x, noise, first):
                return run_plan(fine, self.model.for_rows(first).bind(fine, guidance_scale), x, noise)

            result = run_split(self.ranks, run, self.x_T, None if noise_for is None else noise_for(fine))
            self.nfe += result.nfe
            return result.samples.detach().double().cpu()

        description = self._description(key[0], config, scale)
        if description is None:
            self.memory[key] = compute()
        else:
            self.memory[key] = cached_across(self.ranks, self.cache, description, self._arrays, compute, **self.expect)
        return self.memory[key]

    def reference(self, plan: Plan, noise_for: Callable, guidance_scale: float | None = None) -> torch.Tensor:
        """The reference run for ``plan``'s lambda range at ``guidance_scale`` (None: the model's own)."""
        cfg = plan.config.sde_config()
        grid = self._grid(plan)
        common = dict(sigmas=grid, timesteps=None, steps=len(grid) - 1, coefficients="exact", method="multistep", compat="none",
                      corrector="none", final_decay=0.0,
                      lower_order_final=False, euler_at_final=False, nfe=None)
        if cfg.is_sde:
            fine = cfg.with_options(order=REFERENCE_ORDER, startup="lower-order", **common)
            return self._run(("sde", cfg.algo, cfg.sde_eta, cfg.s_noise, grid), fine, noise_for, guidance_scale)
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
            "reference_nfe": self.nfe,  # model calls of the reference runs computed here (a cache hit costs none)
            "cache": None if self.cache_dir is None else str(self.cache_dir),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            **({"cache_note": self.uncached} if self.uncached else {}),
        }
