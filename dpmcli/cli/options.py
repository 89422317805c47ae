"""Command-line options shared by the commands, and their conversion into a SolverConfig."""

from __future__ import annotations

import functools
import inspect
import os
import typing
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..config import SolverConfig, option_fields
from ..plan import build_plan
from ..errors import ConfigError, option_flag
from ..processes import with_process_defaults
from ..recipe import check_recipe_model, load_recipe, recipe_config, stock_config

# The panels of the options that are the commands' own; the solver options' panels are in config.py
OUTPUT = "Output"
RUN = "Model and run"

# How a field reads on the command line where its type alone does not say it: a file or a comma
# list instead of the tuple it holds; --steps is None until typed (so --sigmas can set the count)
COMMAND_LINE_TYPES = {"steps": Optional[int], "trained_betas": Optional[Path], "sigmas": Optional[str]}
UNSET_UNTIL_TYPED = ("steps",)
# The last-steps panel: switches with long names (no type column; --lower-order-final can be turned off) and --final-decay P
SWITCHES = {
    "lower_order_final": dict(flag="--lower-order-final/--no-lower-order-final", show_default=False, metavar=""),
    "euler_at_final": dict(metavar=""),
    "final_decay": dict(metavar="P"),  # a short type column keeps the panel's switch names whole
}
# SolverConfig fields the command line does not take, and why
NOT_OPTIONS = {
    "timesteps": "a custom grid as training timesteps is for API users; the command line takes --sigmas",
}


def _annotation(spec):
    """The typer annotation of one SolverConfig field: its flag, help text and panel from the field's metadata."""
    name = spec.name
    extra = dict(SWITCHES.get(name, {}))
    flag = extra.pop("flag", option_flag(name))
    if name in UNSET_UNTIL_TYPED:
        extra["show_default"] = str(spec.default)
    python_type = COMMAND_LINE_TYPES.get(name) or _HINTS[name]
    option = typer.Option(flag, help=spec.metadata["help"], rich_help_panel=spec.metadata["panel"], **extra)
    return Annotated[python_type, option]


def _command_line_type(hint):
    """``int | None`` as typer reads it: Optional[int]."""
    args = typing.get_args(hint)
    if type(None) in args:
        return Optional[next(a for a in args if a is not type(None))]
    return hint


_HINTS = {name: _command_line_type(hint) for name, hint in typing.get_type_hints(SolverConfig).items()}
_DEFAULTS = SolverConfig()
# Every shared option: (parameter name, annotated type), in SolverConfig's order
SHARED_OPTIONS = tuple((spec.name, _annotation(spec)) for spec in option_fields() if spec.name not in NOT_OPTIONS)


def option_default(name: str):
    """The default a command's parameter takes: SolverConfig's, or None for an option unset until typed."""
    return None if name in UNSET_UNTIL_TYPED else getattr(_DEFAULTS, name)


def check_format(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"--format: {value!r} is not allowed; choose one of: {', '.join(allowed)}")
    return value


def require_suffix(option: str, path: Path | None, suffix: str) -> None:
    if path is not None and path.suffix != suffix:
        raise ConfigError(f"{option}: {path} must end in {suffix}")


def read_numbers(option: str, value: str) -> tuple[float, ...]:
    """A comma list, or a .npy / whitespace-separated text file of numbers."""
    if os.path.exists(value):
        try:
            array = np.load(value, allow_pickle=False) if value.endswith(".npy") else np.loadtxt(value, delimiter=None, ndmin=1)
            numbers = np.asarray(array, dtype=np.float64).reshape(-1)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{option}: cannot read numbers from {value} ({exc})") from None
    else:
        try:
            numbers = np.array([float(part) for part in value.split(",") if part.strip()], dtype=np.float64)
        except ValueError:
            raise ConfigError(f"{option}: {value!r} is neither a file nor a comma list of numbers") from None
    if len(numbers) == 0:
        raise ConfigError(f"{option}: {value!r} holds no numbers")
    return tuple(float(v) for v in numbers)


def solver_config(**values) -> SolverConfig:
    """The SolverConfig of the parsed options (SolverConfig's names): files and lists read, --steps checked."""
    sigmas, trained_betas, steps = values.pop("sigmas", None), values.pop("trained_betas", None), values.pop("steps", None)
    custom = read_numbers("--sigmas", sigmas) if sigmas is not None else None
    if custom is not None and steps is not None and steps != len(custom) - 1:
        raise ConfigError(f"--steps: {steps} conflicts with --sigmas, which gives {len(custom) - 1} steps; drop one of them")
    if trained_betas is not None and not os.path.exists(str(trained_betas)):
        raise ConfigError(f"--trained-betas: {trained_betas} does not exist")
    betas = read_numbers("--trained-betas", str(trained_betas)) if trained_betas is not None else None
    return SolverConfig(steps=_DEFAULTS.steps if steps is None else steps, trained_betas=betas, sigmas=custom, **values)


CONTEXT = "solver_options_context"


class SolverOptions:
    """The parsed solver options of a command: ``solver(**overrides)`` builds the SolverConfig.

    ``explicit`` names the options the user typed; a model's own schedule (betas, prediction
    type, spacing) replaces dpmcli's defaults but never these.
    """

    def __init__(self, values: dict, explicit: frozenset[str] = frozenset()):
        self.values = values
        self.explicit = explicit

    def __call__(self, **overrides) -> SolverConfig:
        config = with_process_defaults(solver_config(**{**self.values, **overrides}), self.explicit | set(overrides))
        betas = config.trained_betas
        if betas is not None and "train_steps" in self.explicit and len(betas) != config.train_steps:
            raise ConfigError(
                f"--train-steps: {config.train_steps} conflicts with --trained-betas, which holds {len(betas)} betas "
                "(one per training timestep); drop --train-steps"
            )
        if config.sigmas is not None and "final_sigma" in self.explicit:
            wanted = {"zero": 0.0}.get(config.final_sigma)
            if wanted is None or config.sigmas[-1] != wanted:
                raise ConfigError(
                    f"--final-sigma: {config.final_sigma} conflicts with --sigmas, whose last value ({config.sigmas[-1]:g}) "
                    "is where the run ends; drop --final-sigma, or end the list with 0"
                )
        return config


def use_recipe(path, config: SolverConfig, explicit, model: str | None, conditioning: dict | None = None):
    """(recipe, its config, the model, the conditioning) of a --recipe run: typed options must agree with the
    recipe, --model (if typed) must be its model, and its guidance scale is the default one."""
    recipe = load_recipe(path)
    model = check_recipe_model(recipe, model or recipe.model, typed_model=model is not None)
    conditioning = dict(conditioning or {})
    if conditioning.get("guidance_scale") is None and recipe.guidance_scale is not None:
        conditioning["guidance_scale"] = recipe.guidance_scale
    return recipe, recipe_config(recipe, config, explicit), model, conditioning


BESIDE = ("linspace", "karras", "logsnr")  # the stock grids `schedule --recipe` shows beside a recipe's


def recipe_beside(recipe) -> dict:
    """{spacing: sigmas} of stock grids with the recipe's steps and schedule, for its process."""
    config = stock_config(recipe)
    return {spacing: [float(s) for s in build_plan(config.with_options(spacing=spacing)).sigmas]
            for spacing in (BESIDE if config.process != "edm" else ("karras", "exponential", "logsnr"))}


def recipe_note(recipe) -> str:
    """What a --recipe run says on stderr: where the grid comes from and how well it did."""
    held = recipe.held_out or {}
    error = f"; held-out {recipe.metric} {held['error']:.4g} on seed {held.get('seed')}" if isinstance(held.get("error"), (int, float)) else ""
    return f"--recipe {recipe.path}: {recipe.nfe}-call grid tuned for --model {recipe.model}{error}"


def _given_on_command_line(context, names) -> frozenset[str]:
    if context is None:
        return frozenset()
    sources = {name: context.get_parameter_source(name) for name in names}
    return frozenset(name for name, source in sources.items() if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"))


def with_solver_options(command=None, *, exclude: tuple[str, ...] = ()):
    """Add every shared solver/schedule option to ``command``; it receives them as ``solver``.

    ``solver(**overrides)`` builds the SolverConfig, so that errors in the options are raised
    inside the command's error handling; options in ``exclude`` are the command's own (it
    declares them itself and passes them as overrides).
    """
    if command is None:
        return functools.partial(with_solver_options, exclude=exclude)
    chosen = [(name, annotation) for name, annotation in SHARED_OPTIONS if name not in exclude]
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "solver"]
    shared = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=option_default(name),
            annotation=annotation,
        )
        for name, annotation in chosen
    ]

    defaults = {name: option_default(name) for name in exclude}

    @functools.wraps(command)
    def wrapper(**kwargs):
        context = kwargs.pop(CONTEXT, None)
        values = {**defaults, **{name: kwargs.pop(name) for name, _ in chosen}}
        return command(solver=SolverOptions(values, _given_on_command_line(context, [name for name, _ in chosen])), **kwargs)

    # Typer hands the click context to a parameter annotated typer.Context: it says which options were typed
    context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typer.Context)
    wrapper.__signature__ = signature.replace(parameters=[*own, *shared, context])
    annotations = {p.name: p.annotation for p in own}
    annotations[CONTEXT] = typer.Context
    annotations.update(dict(chosen))
    wrapper.__annotations__ = annotations
    return wrapper


def split_list(option: str, values: list[str] | None, convert=str) -> list:
    """Values of a repeatable option that also takes comma lists: ['a,b', 'c'] -> [a, b, c]."""
    out = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                raise ConfigError(f"{option}: {value!r} has an empty entry; give a comma list such as 5,10,20")
            try:
                out.append(convert(part))
            except ValueError:
                raise ConfigError(f"{option}: {part!r} is not a valid value") from None
    return out
