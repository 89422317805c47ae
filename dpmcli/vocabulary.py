"""diffusers' scheduler-config words and dpmcli's options: the one translation, both ways.

A diffusers scheduler config (``scheduler_config.json``, ``pipe.scheduler.config``) names the
training schedule and the step grid in diffusers' words (``num_train_timesteps``,
``timestep_spacing``, ``use_karras_sigmas``, ``final_sigmas_type``, ...); dpmcli's
:class:`~dpmcli.config.SolverConfig` names the same choices after its flags (``train_steps``,
``spacing``, ``final_sigma``, ...). This module holds the table between the two and reads it
both ways:

* :func:`schedule_options` -- a config dict to SolverConfig's schedule options (what
  ``--model diffusers:`` models, the digits model's JSON and :class:`DPMSolverScheduler`
  read), with a one-line ConfigError for a schedule dpmcli cannot follow;
* :func:`solver_options` -- diffusers' words for the solver itself (``algorithm_type``, ...);
* :func:`scheduler_words` -- the inverse: dpmcli options back to diffusers' words.

It imports no diffusers: ``import dpmcli`` stays light.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import BETA_SCHEDULES
from .processes import PROCESS_PREDICTIONS
from .errors import ConfigError

# diffusers' timestep grids, named alike in dpmcli (``timestep_spacing``)
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
# diffusers' boolean switches that replace the timestep grid by a sigma grid, and dpmcli's name for it
SIGMA_FLAGS = {
    "use_karras_sigmas": "karras",
    "use_exponential_sigmas": "exponential",
    "use_beta_sigmas": "beta",
    "use_lu_lambdas": "logsnr",
}
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# FlowMatch scheduler switches that move the path or its end points away from x_s = (1 - s) x_0 + s eps
FLOW_MATCH_REFUSED = ("invert_sigmas", "shift_terminal")
# beta schedules diffusers has and dpmcli follows as a table of betas
TABLE_BETA_SCHEDULES = ("sigmoid",)
# Other schedulers' words for a choice DPM-Solver makes differently (diffusers maps them alike).
ALGO_ALIASES = {"deis": "dpmsolver++"}
SOLVER_TYPE_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}
# diffusers' word -> SolverConfig's, where the two differ only in name
RENAMED = {
    "num_train_timesteps": "train_steps",
    "rescale_betas_zero_snr": "rescale_zero_snr",
    "algorithm_type": "algo",
    "solver_order": "order",
}
# words spelled alike on both sides
SAME_WORDS = (
    "beta_schedule",
    "beta_start",
    "beta_end",
    "prediction_type",
    "steps_offset",
    "lambda_min_clipped",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
)


def sigmoid_betas(n: int, start: float, end: float) -> tuple[float, ...]:
    """diffusers' "sigmoid" schedule (float32), as a table of betas."""
    ramp = torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start
    return tuple(float(b) for b in ramp.tolist())


def betas_table(values) -> tuple[float, ...]:
    """A beta table (list, array or tensor) as a tuple of Python floats."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return tuple(float(b) for b in np.asarray(values, dtype=np.float64).reshape(-1))


def _is_vp(config: dict, where: str) -> None:
    if "beta_schedule" not in config and config.get("trained_betas") is None:
        raise ConfigError(
            f"{where} describes neither a discrete VP (beta) schedule nor a flow schedule (use_flow_sigmas); "
            "dpmcli samples those two"
        )


def is_flow_match(config: dict) -> bool:
    """A flow-matching scheduler's config (FlowMatchEulerDiscreteScheduler and kin: SD3, Flux): named so, or, as
    ``scheduler.config`` is at run time without its class name, a ``shift`` and no betas."""
    if config.get("_class_name"):
        return str(config["_class_name"]).startswith("FlowMatch")
    return "shift" in config and "beta_schedule" not in config and config.get("trained_betas") is None


def flow_match_words(config: dict, where: str = "DPMSolverScheduler: the config") -> dict:
    """DPM-Solver's words for the flow schedule a FlowMatch config describes ({} for any other config):
    what ``DPMSolverMultistepScheduler.from_config`` needs beside SD3's or Flux's scheduler config.
    Read as :func:`schedule_options` reads it: the same refusals, its sigma-grid flag as dpmcli's spacing."""
    if not is_flow_match(config):
        return {}
    options = _flow_match(config, where)
    words = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": options.get("flow_shift", 1.0)}
    if "spacing" in options:  # a flow grid of dpmcli's, not diffusers' flag (which, beside use_flow_sigmas, means VP sigmas)
        words.update({flag: False for flag in SIGMA_FLAGS}, spacing=options["spacing"])
    return words


def config_process(config: dict) -> str:
    """The process a scheduler config describes: "flow" (use_flow_sigmas, or a FlowMatch scheduler) or "vp"."""
    return "flow" if config.get("use_flow_sigmas") or is_flow_match(config) else "vp"


def _sigma_flag(config: dict, where: str) -> dict:
    """``spacing`` from the one sigma-grid flag a config sets ({} for none; two or more are refused)."""
    flagged = [flag for flag in SIGMA_FLAGS if config.get(flag)]
    if len(flagged) > 1:
        raise ConfigError(f"{where} sets {' and '.join(flagged)}; use at most one of {', '.join(SIGMA_FLAGS)}")
    return {"spacing": SIGMA_FLAGS[flagged[0]]} if flagged else {}


def _flow_match(config: dict, where: str) -> dict:
    """A FlowMatch scheduler's words: its ``shift`` is dpmcli's flow shift; its sigma-grid flags name flow grids."""
    for key in FLOW_MATCH_REFUSED:
        if config.get(key):
            raise ConfigError(f"{where} sets {key}, which changes the flow path itself; dpmcli follows the plain one (drop {key})")
    out: dict = {"prediction_type": "flow_prediction"}  # a FlowMatch scheduler's step takes the network's output as the velocity
    if config.get("shift") is not None:
        out["flow_shift"] = float(config["shift"])
    out.update(_sigma_flag(config, where))
    return out


def _flow(config: dict, where: str) -> dict:
    """A flow config (``use_flow_sigmas`` or a FlowMatch scheduler's): its shift; betas and timestep spacing are unused."""
    out: dict = {"process": "flow"}
    if is_flow_match(config):
        out.update(_flow_match(config, where))
    else:
        flagged = [flag for flag in SIGMA_FLAGS if config.get(flag)]
        if flagged:
            raise ConfigError(
                f"{where} sets use_flow_sigmas and {flagged[0]}: diffusers then builds {SIGMA_FLAGS[flagged[0]]} sigmas from its "
                "beta table, which no flow model was trained on; drop one of them"
            )
        if config.get("flow_shift") is not None:
            out["flow_shift"] = float(config["flow_shift"])
    if config.get("use_dynamic_shifting"):
        kind = config.get("time_shift_type", "exponential")
        if kind != "exponential":
            raise ConfigError(f"{where} says time_shift_type {kind!r}; dpmcli has the exponential time shift (flow shift = exp(mu))")
        out.pop("flow_shift", None)  # the shift comes with mu at set_timesteps
    return out


def _betas(config: dict, where: str) -> dict:
    if config.get("trained_betas") is not None:
        return {"trained_betas": betas_table(config["trained_betas"])}
    schedule = config.get("beta_schedule")
    start, end = config.get("beta_start"), config.get("beta_end")
    if schedule in BETA_SCHEDULES:
        out = {"beta_schedule": schedule}
        if start is not None:
            out["beta_start"] = float(start)
        if end is not None:
            out["beta_end"] = float(end)
        return out
    if schedule == "sigmoid" and start is not None and end is not None:
        return {"trained_betas": sigmoid_betas(int(config.get("num_train_timesteps") or 1000), float(start), float(end))}
    raise ConfigError(
        f"{where} uses beta_schedule {schedule!r}, which dpmcli does not have "
        f"(it has {', '.join(BETA_SCHEDULES)} and {', '.join(TABLE_BETA_SCHEDULES)})"
    )


def _spacing(config: dict, where: str) -> dict:
    """``spacing`` from ``timestep_spacing`` and the sigma-grid flags (a flag wins; at most one may be on)."""
    out = {}
    spacing = config.get("timestep_spacing")
    if spacing is not None:
        if spacing not in TIMESTEP_SPACINGS:
            raise ConfigError(f"{where} uses timestep_spacing {spacing!r}; dpmcli follows {', '.join(TIMESTEP_SPACINGS)}")
        out["spacing"] = spacing
    out.update(_sigma_flag(config, where))
    return out


def schedule_options(config: dict, where: str) -> dict:
    """SolverConfig's schedule options from a diffusers scheduler config dict; keys it lacks are left out.

    ``where`` begins every error (``"--model: the scheduler config (DDPMScheduler)"``). Raises a
    one-line ConfigError for a schedule dpmcli cannot follow: not a discrete VP schedule, a
    beta schedule, prediction type, timestep spacing or final sigma it does not have, or more
    than one sigma-grid flag.
    """
    flow = config_process(config) == "flow"
    out: dict = _flow(config, where) if flow else {}
    if not flow:
        _is_vp(config, where)
    if config.get("num_train_timesteps") is not None:
        out["train_steps"] = int(config["num_train_timesteps"])
    if not flow:
        out.update(_betas(config, where))
    prediction = config.get("prediction_type")
    if prediction is not None:
        allowed = PROCESS_PREDICTIONS["flow" if flow else "vp"]
        if prediction not in allowed:
            kind = "a flow schedule" if flow else "a VP schedule (flow_prediction needs use_flow_sigmas)"
            raise ConfigError(f"{where} says prediction_type {prediction!r}; with {kind} dpmcli supports {', '.join(allowed)}")
        out["prediction_type"] = prediction
    if not flow:
        out.update(_spacing(config, where))
        if config.get("steps_offset") is not None:
            out["steps_offset"] = int(config["steps_offset"])
        if config.get("rescale_betas_zero_snr") is not None:
            out["rescale_zero_snr"] = bool(config["rescale_betas_zero_snr"])
    final = config.get("final_sigmas_type")
    if final is not None:
        if final not in FINAL_SIGMAS_TYPES:
            raise ConfigError(f"{where} says final_sigmas_type {final!r}; dpmcli has {' and '.join(FINAL_SIGMAS_TYPES)}")
        out["final_sigma"] = final.replace("_", "-")
    if config.get("lambda_min_clipped") is not None and not flow:
        out["lambda_min_clipped"] = float(config["lambda_min_clipped"])
    if config.get("thresholding"):
        out["thresholding"] = True
        for key in ("dynamic_thresholding_ratio", "sample_max_value"):
            if config.get(key) is not None:
                out[key] = float(config[key])
    elif "thresholding" in config:
        out["thresholding"] = False
    return out


def solver_options(config: dict) -> dict:
    """SolverConfig's solver options from diffusers' words for them (other schedulers' aliases mapped as diffusers maps them)."""
    out: dict = {}
    if config.get("algorithm_type") is not None:
        out["algo"] = ALGO_ALIASES.get(config["algorithm_type"], config["algorithm_type"])
    if config.get("solver_order") is not None:
        out["order"] = config["solver_order"]
    if config.get("solver_type") is not None:
        out["solver_type"] = SOLVER_TYPE_ALIASES.get(config["solver_type"], config["solver_type"])
    for key in ("lower_order_final", "euler_at_final"):
        if config.get(key) is not None:
            out[key] = bool(config[key])
    return out


def scheduler_words(options: dict) -> dict:
    """diffusers' config words for SolverConfig options, in the options' order: the inverse of the readers.

    A spacing becomes ``timestep_spacing`` or its sigma-grid flag (set to True; the caller resets the
    others where it must), ``final_sigma`` becomes ``final_sigmas_type``. Options diffusers has no
    word for (dpmcli's own grids and solver choices) are left out: see :func:`has_word`.
    """
    renamed = {ours: theirs for theirs, ours in RENAMED.items()}
    out: dict = {}
    for key, value in options.items():
        if key == "spacing":
            if value in TIMESTEP_SPACINGS:
                out["timestep_spacing"] = value
            out.update({flag: True for flag, grid in SIGMA_FLAGS.items() if grid == value})
        elif key == "final_sigma":
            out["final_sigmas_type"] = value.replace("-", "_")
        elif key == "process":
            out["use_flow_sigmas"] = value == "flow"
        elif key == "flow_shift":
            out[key] = value
        elif key == "trained_betas":
            out[key] = None if value is None else list(value)
        elif key in renamed:
            out[renamed[key]] = value
        elif key in SAME_WORDS:
            out[key] = value
    return out


def has_word(option: str, value) -> bool:
    """Whether diffusers' config can say ``option=value`` (dpmcli's own grids, for one, it cannot)."""
    if option == "spacing":
        return value in TIMESTEP_SPACINGS or value in SIGMA_FLAGS.values()
    return bool(scheduler_words({option: value}))


__all__ = [
    "SIGMA_FLAGS",
    "TIMESTEP_SPACINGS",
    "has_word",
    "config_process",
    "flow_match_words",
    "is_flow_match",
    "schedule_options",
    "scheduler_words",
    "sigmoid_betas",
    "solver_options",
]
