"""Step recipes: a tuned solver configuration as a readable, self-describing JSON file (``dpmcli tune --out``).

A recipe holds the whole SolverConfig (process, schedule, algorithm, order, weights, corrector,
the grid as sigmas) with the grid's timesteps beside it, the budget, the model it was tuned for,
and its errors on the training and held-out x_T. It is read by ``sample --recipe``, ``compare
--recipe``, ``schedule``/``plot-schedule --recipe`` and ``DPMSolverScheduler.from_recipe``;
:func:`load_recipe` checks it, :func:`recipe_config` lays it under the options a user typed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from .config import SolverConfig
from .plan import build_plan
from .errors import ConfigError, option_flag
from .processes import trained_process
from .vocabulary import scheduler_words

RECIPE_FORMAT = "dpmcli-recipe/1"
# options a recipe never fixes: they say how a run is done, not which solver it is
NOT_RECIPE = ("timesteps",)


@dataclass(frozen=True)
class Recipe:
    model: str
    process: str
    nfe: int
    config: SolverConfig
    timesteps: tuple[float, ...] = ()
    model_identity: dict | None = None
    guidance_scale: float | None = None
    conditioning: dict = field(default_factory=dict)
    metric: str = "l2_median"
    # where its samples are scored: the configured end (0: the clean end point), also when the grid's own
    # last sigma was searched (its latent there is the sample)
    target_sigma: float = 0.0
    training: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    format: str = RECIPE_FORMAT
    path: str | None = None  # where it was read from (not written)

    @property
    def digest(self) -> str:
        """sha256 of what the recipe says (not where it lies): a run log knows a rewritten recipe."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()

    @property
    def name(self) -> str:
        """How a run of this recipe is labelled: its file's stem, else 'recipe'."""
        return Path(self.path).stem if self.path else "recipe"

    def to_dict(self) -> dict:
        config = self.config.to_dict()
        for key in ("timesteps", "sigmas", "steps", "spacing"):  # the grid is written once, under "grid"
            config.pop(key, None)
        if self.config.trained_betas is not None:
            config["trained_betas"] = list(self.config.trained_betas)  # the table itself: a recipe must rebuild its schedule
        return {
            "format": self.format,
            "what": f"a step recipe tuned by dpmcli tune: {self.config.algo} order {self.config.order} on {self.nfe} model calls "
                    f"for --model {self.model} ({self.process}); use it with dpmcli sample/compare/schedule --recipe FILE",
            "model": self.model,
            "model_identity": self.model_identity,
            "process": self.process,
            "nfe": self.nfe,
            "guidance_scale": self.guidance_scale,
            "conditioning": self.conditioning,
            "grid": {"sigmas": list(self.config.sigmas or ()), "timesteps": list(self.timesteps)},
            "config": config,
            "metric": self.metric,
            "target_sigma": self.target_sigma,
            "training": self.training,
            "held_out": self.held_out,
            "baselines": self.baselines,
        }


def _fail(path, why: str) -> ConfigError:
    return ConfigError(f"--recipe: {path}: {why}")


def _config_from(data: dict, path) -> SolverConfig:
    known = {f.name for f in fields(SolverConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(path, f"config has options dpmcli does not know ({', '.join(unknown)}); was it written by another version?")
    values = dict(data)
    for key in ("sigmas", "trained_betas"):
        if isinstance(values.get(key), list):
            values[key] = tuple(float(v) for v in values[key])
    if isinstance(values.get("trained_betas"), str):
        raise _fail(path, "config holds a trained-betas table only by its length; a recipe needs the betas themselves")
    if values.get("lambda_min_clipped", 0.0) is None:
        values["lambda_min_clipped"] = -math.inf  # JSON has no -inf: no clipping is written as null
    values.pop("spacing", None)
    if values.get("final_sigma") not in ("zero", "sigma-min"):
        values.pop("final_sigma", None)  # a custom grid's final sigma is its last value ("custom")
    try:
        return SolverConfig(**values).validated()
    except (ConfigError, TypeError) as exc:
        raise _fail(path, f"config is not valid: {exc}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file: one line ConfigError naming the file for anything wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not a recipe: cannot read it as JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise _fail(path, f"not a recipe (format {got!r}; dpmcli tune writes {RECIPE_FORMAT!r})")
    missing = [k for k in ("model", "process", "nfe", "config", "grid") if k not in data]
    if missing:
        raise _fail(path, f"the recipe lacks {', '.join(missing)}")
    wrong = [k for k, kind in SHAPES.items() if k in data and data[k] is not None and not isinstance(data[k], kind)]
    if wrong:
        raise _fail(path, f"{wrong[0]} must be {SHAPES[wrong[0]].__name__ if isinstance(SHAPES[wrong[0]], type) else 'a number'}")
    try:
        return _recipe_from(data, path)
    except (TypeError, ValueError) as exc:  # a hand-edited value of the wrong kind (a string among the sigmas)
        raise _fail(path, f"malformed ({exc})") from None


# the JSON type each key of a recipe file must have
SHAPES = {"model": str, "process": str, "nfe": int, "config": dict, "grid": dict, "conditioning": dict, "training": dict,
          "held_out": dict, "baselines": dict, "model_identity": dict, "guidance_scale": (int, float), "target_sigma": (int, float)}


def _recipe_from(data: dict, path) -> Recipe:
    grid = data["grid"]
    if not isinstance(grid.get("sigmas"), list):
        raise _fail(path, "grid.sigmas must be the list of the grid's sigmas")
    config = _config_from({**data["config"], "sigmas": grid["sigmas"]}, path)
    if config.process != data["process"]:
        raise _fail(path, f"says process {data['process']!r} but its config is {config.process!r}")
    plan = build_plan(config)
    if data["nfe"] != plan.nfe:
        raise _fail(path, f"says nfe {data['nfe']} but its grid and solver make {plan.nfe} model calls")
    timesteps = tuple(float(t) for t in plan.timesteps)
    written = [float(t) for t in grid.get("timesteps") or ()]
    if written and (len(written) != len(timesteps) or any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(written, timesteps))):
        raise _fail(path, "grid.timesteps do not follow from grid.sigmas (the sigmas are the grid; the timesteps are shown for reading)")
    return Recipe(
        model=data["model"], process=config.process, nfe=plan.nfe, config=config, timesteps=timesteps,
        model_identity=data.get("model_identity"), guidance_scale=data.get("guidance_scale"),
        conditioning=dict(data.get("conditioning") or {}), metric=str(data.get("metric", "")),
        target_sigma=_target(data.get("target_sigma", config.sigmas[-1]), config, path),
        training=dict(data.get("training") or {}), held_out=dict(data.get("held_out") or {}),
        baselines=dict(data.get("baselines") or {}), path=str(path),
    )


def _target(value, config: SolverConfig, path) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= config.sigmas[-1]:
        raise _fail(path, f"target_sigma {value!r} must be a number from 0 to the grid's last sigma ({config.sigmas[-1]:g})")
    return float(value)


def target_config(recipe: Recipe) -> SolverConfig:
    """The config whose lambda range a recipe's samples are scored over: its grid, ending at target_sigma."""
    if recipe.target_sigma == recipe.config.sigmas[-1]:
        return recipe.config
    return recipe.config.with_options(sigmas=(*recipe.config.sigmas[:-1], recipe.target_sigma))


def stock_config(recipe: Recipe) -> SolverConfig:
    """The recipe's solver and schedule on a stock grid of its step count (what it is drawn and listed beside)."""
    final = "zero" if recipe.target_sigma == 0.0 else "sigma-min"
    spacing = "karras" if recipe.process == "edm" else "linspace"  # the process's own default grid
    return recipe.config.with_options(sigmas=None, timesteps=None, final_sigma=final, spacing=spacing, final_decay=0.0)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    return a == b


def recipe_config(recipe: Recipe, typed: SolverConfig, explicit) -> SolverConfig:
    """The recipe's config; an option the user typed must say what the recipe says (else one line, exit 2)."""
    for name in sorted(explicit):
        if name in NOT_RECIPE or not hasattr(recipe.config, name):
            continue
        theirs, ours = getattr(recipe.config, name), getattr(typed, name)
        if name == "steps" and typed.sigmas is None and ours == recipe.config.steps:
            continue
        if not _same(ours, theirs):
            shown = "the recipe's grid" if name in ("sigmas", "spacing") else repr(theirs)
            raise ConfigError(f"{option_flag(name)}: {ours!r} contradicts --recipe {recipe.path} ({shown}); drop {option_flag(name)}")
    return recipe.config


def check_recipe_model(recipe: Recipe, model: str, typed_model: bool) -> str:
    """The model a recipe run uses: the recipe's, or the one typed, which must be the recipe's."""
    if typed_model and model != recipe.model:
        raise ConfigError(
            f"--recipe: {recipe.path} was tuned for --model {recipe.model} ({recipe.process}), not --model {model}: a grid learned "
            f"for one model is not a grid for another; run dpmcli tune --model {model}"
        )
    return recipe.model


# a model's own grid words: a recipe's grid replaces them
GRID_OPTIONS = ("spacing", "steps_offset", "final_sigma", "sigmas", "timesteps", "steps", "lower_order_final", "euler_at_final")


def check_recipe_schedule(recipe: Recipe, options: dict) -> None:
    """The model's training schedule (its schedule options, grid words aside) must be the one the recipe was tuned on."""
    trained = trained_process(options)
    if trained is not None and trained != recipe.process:
        raise ConfigError(f"--recipe: {recipe.path} is a --process {recipe.process} recipe, but --model {recipe.model} was trained "
                          f"on --process {trained}: it is a recipe for another model; tune again for this one")
    for name, value in options.items():
        if name in GRID_OPTIONS or not hasattr(recipe.config, name):
            continue
        theirs = getattr(recipe.config, name)
        if isinstance(value, (list, tuple)) and theirs is not None:
            same = len(value) == len(theirs) and all(_same(float(a), float(b)) for a, b in zip(value, theirs))
        else:
            same = _same(value, theirs)
        if not same:
            shown = f"{len(theirs)} values" if isinstance(theirs, tuple) else repr(theirs)
            raise ConfigError(f"--recipe: {recipe.path} was tuned with {option_flag(name)} {shown}, but --model {recipe.model} "
                              "has another value: it is a recipe for another model; tune again for this one")


# what a recipe's training schedule is: the options a model's schedule sets (grid words aside)
SCHEDULE_FIELDS = ("beta_start", "beta_end", "beta_schedule", "train_steps", "trained_betas", "rescale_zero_snr",
                   "prediction_type", "process", "flow_shift")
# SolverConfig options that DPMSolverScheduler takes under dpmcli's own names: SCHEDULER_SOLVER passed through as
# given, algo and order beside diffusers' words for them, rho read as a float
SCHEDULER_SOLVER = ("method", "startup", "coefficients", "compat", "eta", "s_noise", "corrector", "unic_variant", "final_decay")
SCHEDULER_OWN = ("algo", "order", "rho", *SCHEDULER_SOLVER)


def scheduler_parameters(config: SolverConfig) -> dict:
    """DPMSolverScheduler's parameters for a recipe's config: diffusers' words for the schedule, dpmcli's for the solver
    (the grid itself is passed to set_timesteps)."""
    if config.process == "edm":
        raise ConfigError("DPMSolverScheduler.from_recipe: the drop-in scheduler runs VP and flow schedules; this recipe is edm")
    schedule = {name: getattr(config, name) for name in (
        *SCHEDULE_FIELDS, "lambda_min_clipped", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
        "solver_type", "lower_order_final", "euler_at_final",
    )}
    if config.trained_betas is None:
        del schedule["trained_betas"]
    else:
        del schedule["beta_schedule"]
    return {**scheduler_words(schedule), **{name: getattr(config, name) for name in SCHEDULER_OWN}}


def check_recipe_identity(recipe: Recipe, identity: dict | None) -> None:
    """A network's recipe names the weights it was tuned on; other weights under the same name are refused."""
    if recipe.model_identity is not None and identity is not None and recipe.model_identity != identity:
        raise ConfigError(f"--recipe: {recipe.path} was tuned for other weights of --model {recipe.model}; tune again for these")


__all__ = ["RECIPE_FORMAT", "Recipe", "check_recipe_identity", "check_recipe_model", "check_recipe_schedule", "load_recipe",
           "recipe_config", "scheduler_parameters", "stock_config", "target_config", "SCHEDULE_FIELDS", "SCHEDULER_SOLVER"]
