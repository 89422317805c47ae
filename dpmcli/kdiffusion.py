"""``--compat k-diffusion``: which of k-diffusion's samplers a config is, and k-diffusion's Brownian noise.

k-diffusion's DPM-Solver++ samplers (as ComfyUI and A1111 run them) are dpmcli plans with
k-diffusion's order policy (no lowered final orders: config.validated) and, for dpmpp_3m_sde, an
exact-weight second step (rows.multistep_spec).
This module says which sampler a config reproduces, refuses what k-diffusion has not, and
rebuilds k-diffusion's ``BrownianTreeNoiseSampler`` on torchsde's Brownian tree, so that a seed
gives the noise k-diffusion and ComfyUI give it.
"""

from __future__ import annotations

import importlib
import warnings

import torch

from .errors import ConfigError
from .noise import derived_seed

# k-diffusion's samplers: (method, injects noise, order) -> (its function, the dpmcli options that pick it)
SAMPLERS = {
    ("multistep", False, 2): ("sample_dpmpp_2m", "--algo dpmsolver++ --order 2"),
    ("multistep", True, 2): ("sample_dpmpp_2m_sde", "--algo sde-dpmsolver++ --order 2"),
    ("multistep", True, 3): ("sample_dpmpp_3m_sde", "--algo sde-dpmsolver++ --order 3"),
    ("ancestral", True, 1): ("sample_euler_ancestral", "--method ancestral --order 1"),
    ("ancestral", True, 2): ("sample_dpmpp_2s_ancestral", "--method ancestral --order 2"),
    ("singlestep", True, 2): ("sample_dpmpp_sde", "--method singlestep --algo sde-dpmsolver++ --order 2"),
}


def sampler_name(cfg) -> str | None:
    """The k-diffusion sampler function a config reproduces under --compat k-diffusion (None: none)."""
    if not cfg.predicts_data:
        return None
    return SAMPLERS.get((cfg.method, cfg.is_sde, cfg.order), (None, None))[0]


def check_kdiffusion_compat(cfg) -> None:
    """--compat k-diffusion: one of k-diffusion's DPM-Solver++ samplers, with its options and no others."""
    where = "--compat k-diffusion"
    name = sampler_name(cfg)
    if name is None:
        choices = "; ".join(f"{options} ({sampler[7:]})" for sampler, options in SAMPLERS.values())
        raise ConfigError(f"{where}: k-diffusion has no --method {cfg.method} --algo {cfg.algo} --order {cfg.order}; its samplers are: {choices}")
    if cfg.coefficients != "published":
        raise ConfigError(f"{where}: uses k-diffusion's own weights; drop --coefficients exact")
    if cfg.method == "multistep" and cfg.startup != "lower-order":
        raise ConfigError(f"{where}: k-diffusion's multistep samplers start with lower orders; drop --startup singlestep")
    if cfg.solver_type == "heun" and name != "sample_dpmpp_2m_sde":
        raise ConfigError(f"{where}: only dpmpp_2m_sde has a heun form; drop --solver-type heun")
    if cfg.euler_at_final:
        raise ConfigError(f"{where}: k-diffusion lowers only the step onto sigma 0 to first order; drop --euler-at-final")
    if cfg.nfe is not None:
        raise ConfigError(f"{where}: k-diffusion's samplers take their sigmas, not a budget; use --steps instead of --nfe")
    if cfg.thresholding:
        raise ConfigError(f"{where}: k-diffusion's samplers have no dynamic thresholding; drop --thresholding")


def stage_sigmas(sigma: float, sigma_next: float, r: float = 0.5) -> tuple[float, float, float]:
    """dpmpp_sde's noise interval ends, as k-diffusion computes them in float64: exp(-t) for t = -log sigma,
    the point r of the way in t, and the step's end (the Brownian tree is asked for these exact floats)."""
    t = -torch.tensor(float(sigma), dtype=torch.float64).log()
    t_next = -torch.tensor(float(sigma_next), dtype=torch.float64).log()
    s = t + (t_next - t) * r
    return tuple(float(v) for v in torch.exp(-torch.stack([t, s, t_next])))


class TreeNoise:
    """k-diffusion's ``BrownianTreeNoiseSampler``, rebuilt on torchsde: ``noise(index, like, scale)`` for a plan.

    As k-diffusion's samplers build it: torchsde ``BrownianTree`` W in the grid's sigma (diffusers'
    sigma: sigma / alpha on VP, sigma on EDM, s on flow), over [smallest positive sigma, largest sigma]
    of the grid, and the noise of the interval from sigma_a to sigma_b is sign * (W(hi) - W(lo)) /
    sqrt(hi - lo) with (lo, hi) the sorted ends and sign -1 when sigma decreases. Sample i has its
    own tree with entropy ``seed + i`` (k-diffusion's list of seeds), so sample 0 of a seed is what
    k-diffusion and ComfyUI draw for that seed at batch 1, and no sample depends on the batch. Trees
    live on the CPU in the latent's dtype (ComfyUI's ``cpu=True``), so every device gets the same noise.
    """

    def __init__(self, seed: int, plan, where: str = "--noise"):
        derived_seed(seed, 0)  # the one --seed check
        try:
            self._torchsde = importlib.import_module("torchsde")
        except ImportError:
            raise ConfigError(f"{where}: k-diffusion's Brownian tree needs torchsde: pip install torchsde") from None
        self.seed = seed
        # a drop-in scheduler builds its source before its first set_timesteps: no plan, no draws yet
        self.spans = {} if plan is None else plan.noise_spans
        sigmas = [1.0] if plan is None else [float(s) for s in plan.sigmas]
        self.ends = (min((s for s in sigmas if s > 0.0), default=1.0), max(sigmas))
        self._trees: list = []
        self._key = None

    def _trees_for(self, like: torch.Tensor) -> list:
        key = (tuple(like.shape[1:]), like.dtype)
        if key != self._key:
            t0, t1 = (torch.tensor(end, dtype=torch.float64) for end in self.ends)
            w0 = torch.zeros(like.shape[1:], dtype=like.dtype)
            self._trees = [self._torchsde.BrownianTree(t0, w0, t1, entropy=self.seed + i) for i in range(like.shape[0])]
            self._key = key
        elif len(self._trees) < like.shape[0]:
            raise ValueError("k-diffusion noise: the batch grew between draws")
        return self._trees[: like.shape[0]]

    def __call__(self, index: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        start, end = self.spans[index]
        low, high, sign = (start, end, 1.0) if start < end else (end, start, -1.0)
        low_t, high_t = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
        with warnings.catch_warnings():
            # torchsde keeps its ends to ~7 digits and clamps (with a warning) a query at the true sigma_max
            # just past it; k-diffusion's sampler gets the same clamp
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(low_t, high_t) for tree in self._trees_for(like)])
        z = w * (sign * scale / float((high_t - low_t).sqrt()))
        return z.to(device=like.device, dtype=like.dtype)
