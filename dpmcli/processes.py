"""The noise processes' options: which belong to which process, their defaults, ranges and compat limits.

:class:`~dpmcli.config.SolverConfig` validates with these; the processes themselves (alpha_t,
sigma_t, what the network is told) are in :mod:`dpmcli.schedule`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .errors import ConfigError, option_flag

PROCESSES = ("vp", "flow", "edm")
# what each process's network can predict (edm: diffusers' preconditioned F, its two signs)
PROCESS_PREDICTIONS = {
    "vp": ("epsilon", "sample", "v_prediction"),
    "flow": ("flow_prediction", "epsilon", "sample", "v_prediction"),
    "edm": ("epsilon", "v_prediction"),
}
# the step grids each process can be stepped on (flow: linspace and time-uniform are diffusers'
# flow grid, uniform in s; edm: sigma ramps and logsnr, all placed in lambda)
PROCESS_SPACINGS = {
    "flow": ("linspace", "time-uniform", "logsnr", "karras", "exponential", "beta", "custom"),
    "edm": ("karras", "exponential", "logsnr", "beta", "custom"),
}
# what a process changes in dpmcli's defaults when the option is not given: what its networks
# predict (flow: v = eps - x0, diffusers' flow_prediction) and the grid it is sampled on (edm: karras)
PROCESS_DEFAULTS = {"flow": {"prediction_type": "flow_prediction"}, "edm": {"spacing": "karras"}}
# options that belong to one process only: a value other than the default elsewhere is refused
VP_ONLY = ("beta_schedule", "beta_start", "beta_end", "trained_betas", "rescale_zero_snr", "lambda_min_clipped", "steps_offset")
FLOW_ONLY = ("flow_shift", "flow_mu")
EDM_ONLY = ("sigma_min", "sigma_max", "sigma_data")


def describe_process(cfg) -> str:
    """The noise process in a few words: its betas (vp), its shift (flow) or its sigma range (edm)."""
    if cfg.process == "flow":
        return "flow" + (f" (shift {cfg.shift:.6g})" if cfg.shift != 1.0 else "")
    if cfg.process == "edm":
        return f"edm (sigma {cfg.sigma_min:g} to {cfg.sigma_max:g}, sigma_data {cfg.sigma_data:g})"
    return f"{cfg.beta_schedule} betas"


def _listed(values) -> str:
    return ", ".join(values)


def with_process_defaults(cfg, given):
    """``cfg`` with its process's defaults (PROCESS_DEFAULTS) for every option not in ``given``."""
    changes = {name: value for name, value in PROCESS_DEFAULTS.get(cfg.process, {}).items() if name not in given}
    return replace(cfg, **changes) if changes else cfg


def foreign_options(process: str) -> tuple[str, ...]:
    """The options of the processes other than ``process``."""
    own = {"vp": VP_ONLY, "flow": FLOW_ONLY, "edm": EDM_ONLY}.get(process, ())
    return tuple(name for name in (*VP_ONLY, *FLOW_ONLY, *EDM_ONLY) if name not in own)


def check_process(cfg, defaults: dict) -> None:
    """The options a noise process takes, and their ranges (``defaults``: SolverConfig's, by field name)."""
    process = cfg.process
    for name in foreign_options(process):
        if getattr(cfg, name) != defaults[name]:
            owner = "vp" if name in VP_ONLY else "flow" if name in FLOW_ONLY else "edm"
            raise ConfigError(f"{option_flag(name)}: applies to --process {owner} only, not --process {process}; drop it")
    allowed = PROCESS_PREDICTIONS[process]
    if cfg.prediction_type not in allowed:
        raise ConfigError(
            f"--prediction-type: {cfg.prediction_type!r} is not allowed with --process {process}; choose one of: {_listed(allowed)}"
        )
    spacings = PROCESS_SPACINGS.get(process)
    if spacings is not None and cfg.spacing not in spacings and cfg.sigmas is None and cfg.timesteps is None:
        raise ConfigError(f"--spacing: {cfg.spacing!r} is not allowed with --process {process}; choose one of: {_listed(spacings[:-1])}")
    if process == "flow":
        if not _finite(cfg.flow_shift) or cfg.flow_shift <= 0:
            raise ConfigError(f"--flow-shift: {cfg.flow_shift!r} is not allowed; it must be a positive number (1: no shift)")
        if cfg.flow_mu is not None:
            if not _finite(cfg.flow_mu) or abs(cfg.flow_mu) > 50:
                raise ConfigError(f"--flow-mu: {cfg.flow_mu!r} is not allowed; it must be a number in [-50, 50] (the shift is exp(mu))")
            if cfg.flow_shift != 1.0:
                raise ConfigError("--flow-mu: sets the shift exp(mu) itself; drop --flow-shift or --flow-mu")
    if process == "edm":
        for name in EDM_ONLY:
            value = getattr(cfg, name)
            if not _finite(value) or value <= 0:
                raise ConfigError(f"{option_flag(name)}: {value!r} is not allowed; it must be a positive number")
        if not cfg.sigma_min < cfg.sigma_max:
            raise ConfigError(f"--sigma-min: {cfg.sigma_min!r} is not allowed; it must be below --sigma-max ({cfg.sigma_max!r})")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_diffusers_process(cfg) -> None:
    """What diffusers' flow mode (use_flow_sigmas) and EDMDPMSolverMultistepScheduler can reproduce."""
    if cfg.process == "flow":
        if not cfg.predicts_data:
            raise ConfigError(
                f"--compat diffusers: compat flow grids end at sigma 0 (diffusers' sigma-min end is a VP quirk not reproduced), "
                f"which diffusers refuses for {cfg.algo}; use dpmsolver++ or sde-dpmsolver++, or leave compat mode"
            )
        if cfg.spacing != "linspace" or cfg.timesteps is not None:
            raise ConfigError(
                f"--compat diffusers: diffusers' flow mode has one grid (use_flow_sigmas: uniform in s, then shifted), "
                f"not --spacing {cfg.spacing}; use --spacing linspace"
            )
        if cfg.final_sigma != "zero":
            raise ConfigError(
                "--compat diffusers: diffusers' flow mode ends a sigma-min grid at its beta table's sigma_min, which a flow "
                "model has no use for; use --final-sigma zero"
            )
        if cfg.prediction_type == "v_prediction":
            raise ConfigError(
                "--compat diffusers: diffusers' flow mode converts v_prediction with the VP formula, which is not v on a "
                "flow path; use flow_prediction, epsilon or sample"
            )
    if cfg.process == "edm":
        if cfg.method != "multistep":
            raise ConfigError("--compat diffusers: EDMDPMSolverMultistepScheduler is multistep only; drop --method")
        if cfg.spacing not in ("karras", "exponential"):
            raise ConfigError(f"--compat diffusers: EDMDPMSolverMultistepScheduler has no --spacing {cfg.spacing}; use karras or exponential")
        if not cfg.predicts_data:
            raise ConfigError(f"--compat diffusers: EDMDPMSolverMultistepScheduler has no --algo {cfg.algo}; use dpmsolver++ or sde-dpmsolver++")
        if cfg.is_sde and cfg.order == 3:
            raise ConfigError("--compat diffusers: EDMDPMSolverMultistepScheduler has no third-order sde-dpmsolver++; use --order 1 or 2")


def trained_process(options: dict) -> str | None:
    """The process a model's schedule options say it was trained on: named, or vp where it has betas; None for a mixture."""
    return options.get("process", "vp" if "beta_schedule" in options or "trained_betas" in options else None)
