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

from ..config import (
    ALGOS,
    BETA_SCHEDULES,
    COEFFICIENTS,
    FINAL_SIGMAS,
    PREDICTION_TYPES,
    SOLVER_TYPES,
    SPACINGS,
    SolverConfig,
)
from ..errors import ConfigError

SOLVER = "Solver"
# Long option names get panels of their own (and switches no type column), so that at 80 columns
# the help keeps room for its words and no name is cut short.
FINAL_STEPS = "Solver: the last steps"
THRESHOLD = "Solver: dynamic thresholding"
GRID = "Schedule and grid"
OUTPUT = "Output"
RUN = "Model and run"


def _choices(values) -> str:
    return ", ".join(values)


Algo = Annotated[
    str,
    typer.Option(
        "--algo",
        help=f"Algorithm: {_choices(ALGOS)}. The ++ forms integrate the data (x0) prediction, the others the noise; "
        "sde- forms add fresh noise each step.",
        rich_help_panel=SOLVER,
    ),
]
Order = Annotated[
    int,
    typer.Option(
        "--order",
        help="Order: multistep 1-8 (orders above 3 always use exact weights), singlestep 1-3, adaptive 2-3. "
        "Order 3 with published weights converges at order 2 (see --coefficients).",
        rich_help_panel=SOLVER,
    ),
]
Steps = Annotated[
    Optional[int],
    typer.Option("--steps", help="Number of grid steps (multistep with the classic start-up: also the number of model calls).", show_default="20", rich_help_panel=SOLVER),
]
Method = Annotated[
    str,
    typer.Option(
        "--method",
        help="multistep (reuse earlier model outputs), singlestep (DPM-Solver-1/2/3: extra evaluations inside each step) "
        "or adaptive (DPM-Solver-12/23 with a step-size controller; ODE algorithms).",
        rich_help_panel=SOLVER,
    ),
]
Startup = Annotated[
    str,
    typer.Option(
        "--startup",
        help="How an order-K multistep run starts: lower-order (orders 1, 2, ... first; caps the asymptotic order at 2) "
        "or singlestep (extra evaluations so that the start keeps order K; ODE algorithms).",
        rich_help_panel=SOLVER,
    ),
]
Nfe = Annotated[
    Optional[int],
    typer.Option("--nfe", help="singlestep: spend exactly this many model calls (DPM-Solver-fast picks steps and orders).", rich_help_panel=SOLVER),
]
Atol = Annotated[float, typer.Option("--atol", help="adaptive: absolute error tolerance per step.", rich_help_panel=SOLVER)]
Rtol = Annotated[float, typer.Option("--rtol", help="adaptive: relative error tolerance per step.", rich_help_panel=SOLVER)]
SolverType = Annotated[
    str,
    typer.Option("--solver-type", help=f"Second-order form: {_choices(SOLVER_TYPES)} (heun is exact for linear predictions).", rich_help_panel=SOLVER),
]
Coefficients = Annotated[
    str,
    typer.Option(
        "--coefficients",
        help=f"{_choices(COEFFICIENTS)}: 'published' are the weights of the papers, diffusers and k-diffusion; "
        "'exact' integrates the interpolating polynomial exactly (order k converges at order k).",
        rich_help_panel=SOLVER,
    ),
]
Compat = Annotated[
    str,
    typer.Option("--compat", help="none, or diffusers: reproduce DPMSolverMultistepScheduler's arithmetic step for step.", rich_help_panel=SOLVER),
]
LowerOrderFinal = Annotated[
    bool,
    typer.Option("--lower-order-final/--no-lower-order-final", help="Lower the order of the last two steps when there are fewer than 15 (on by default).", show_default=False, metavar="", rich_help_panel=FINAL_STEPS),
]
EulerAtFinal = Annotated[bool, typer.Option("--euler-at-final", help="Take the last step with first order.", metavar="", rich_help_panel=FINAL_STEPS)]
PredictionType = Annotated[
    str,
    typer.Option("--prediction-type", help=f"What the model predicts: {_choices(PREDICTION_TYPES)}.", rich_help_panel=SOLVER),
]
Thresholding = Annotated[bool, typer.Option("--thresholding", help="Dynamic thresholding of the x0 prediction (Imagen).", rich_help_panel=THRESHOLD)]
ThresholdRatio = Annotated[float, typer.Option("--dynamic-thresholding-ratio", help="Quantile of |x0| used by --thresholding.", rich_help_panel=THRESHOLD)]
SampleMax = Annotated[float, typer.Option("--sample-max-value", help="Largest threshold --thresholding may use.", rich_help_panel=THRESHOLD)]

BetaSchedule = Annotated[
    str,
    typer.Option("--beta-schedule", help=f"Training betas: {_choices(BETA_SCHEDULES)}.", rich_help_panel=GRID),
]
BetaStart = Annotated[float, typer.Option("--beta-start", help="First beta of linear / scaled_linear.", rich_help_panel=GRID)]
BetaEnd = Annotated[float, typer.Option("--beta-end", help="Last beta of linear / scaled_linear.", rich_help_panel=GRID)]
TrainSteps = Annotated[int, typer.Option("--train-steps", help="Number of training timesteps.", rich_help_panel=GRID)]
TrainedBetas = Annotated[
    Optional[Path],
    typer.Option("--trained-betas", help="Betas from a .npy or text file (overrides --beta-schedule).", rich_help_panel=GRID),
]
RescaleZeroSnr = Annotated[bool, typer.Option("--rescale-zero-snr", help="Rescale the betas to zero terminal SNR.", rich_help_panel=GRID)]
LambdaMinClipped = Annotated[
    float,
    typer.Option("--lambda-min-clipped", help="Drop the noisiest timesteps whose lambda is below this (cosine schedules).", rich_help_panel=GRID),
]
Spacing = Annotated[
    str,
    typer.Option("--spacing", help=f"Step grid: {_choices(SPACINGS[:-1])} (custom: see --sigmas).", rich_help_panel=GRID),
]
StepsOffset = Annotated[int, typer.Option("--steps-offset", help="Offset added to 'leading' timesteps.", rich_help_panel=GRID)]
Rho = Annotated[float, typer.Option("--rho", help="Exponent of the karras grid.", rich_help_panel=GRID)]
Sigmas = Annotated[
    Optional[str],
    typer.Option(
        "--sigmas",
        help="A custom grid: comma list '14.6,7.0,...,0' or a .npy/text file; N+1 decreasing values, the last the final sigma.",
        rich_help_panel=GRID,
    ),
]
FinalSigma = Annotated[
    str,
    typer.Option("--final-sigma", help=f"Where the last step lands: {_choices(FINAL_SIGMAS)}.", rich_help_panel=GRID),
]


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


def solver_config(
    *,
    algo: str,
    order: int,
    steps: int | None,
    method: str,
    startup: str,
    nfe: int | None,
    atol: float,
    rtol: float,
    solver_type: str,
    coefficients: str,
    compat: str,
    lower_order_final: bool,
    euler_at_final: bool,
    prediction_type: str,
    thresholding: bool,
    dynamic_thresholding_ratio: float,
    sample_max_value: float,
    beta_schedule: str,
    beta_start: float,
    beta_end: float,
    train_steps: int,
    trained_betas: Path | None,
    rescale_zero_snr: bool,
    lambda_min_clipped: float,
    spacing: str,
    steps_offset: int,
    rho: float,
    sigmas: str | None,
    final_sigma: str,
) -> SolverConfig:
    custom = read_numbers("--sigmas", sigmas) if sigmas is not None else None
    if custom is not None and steps is not None and steps != len(custom) - 1:
        raise ConfigError(f"--steps: {steps} conflicts with --sigmas, which gives {len(custom) - 1} steps; drop one of them")
    if trained_betas is not None and not os.path.exists(str(trained_betas)):
        raise ConfigError(f"--trained-betas: {trained_betas} does not exist")
    betas = read_numbers("--trained-betas", str(trained_betas)) if trained_betas is not None else None
    return SolverConfig(
        algo=algo,
        order=order,
        steps=20 if steps is None else steps,
        method=method,
        startup=startup,
        nfe=nfe,
        atol=atol,
        rtol=rtol,
        solver_type=solver_type,
        coefficients=coefficients,
        compat=compat,
        lower_order_final=lower_order_final,
        euler_at_final=euler_at_final,
        prediction_type=prediction_type,
        thresholding=thresholding,
        dynamic_thresholding_ratio=dynamic_thresholding_ratio,
        sample_max_value=sample_max_value,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        train_steps=train_steps,
        trained_betas=betas,
        rescale_zero_snr=rescale_zero_snr,
        lambda_min_clipped=lambda_min_clipped,
        spacing=spacing,
        steps_offset=steps_offset,
        rho=rho,
        sigmas=custom,
        final_sigma=final_sigma,
    )


# Every shared option: (parameter name, annotated type); defaults come from SolverConfig.
SHARED_OPTIONS = (
    ("algo", Algo),
    ("order", Order),
    ("steps", Steps),
    ("method", Method),
    ("startup", Startup),
    ("nfe", Nfe),
    ("atol", Atol),
    ("rtol", Rtol),
    ("solver_type", SolverType),
    ("coefficients", Coefficients),
    ("compat", Compat),
    ("lower_order_final", LowerOrderFinal),
    ("euler_at_final", EulerAtFinal),
    ("prediction_type", PredictionType),
    ("thresholding", Thresholding),
    ("dynamic_thresholding_ratio", ThresholdRatio),
    ("sample_max_value", SampleMax),
    ("beta_schedule", BetaSchedule),
    ("beta_start", BetaStart),
    ("beta_end", BetaEnd),
    ("train_steps", TrainSteps),
    ("trained_betas", TrainedBetas),
    ("rescale_zero_snr", RescaleZeroSnr),
    ("lambda_min_clipped", LambdaMinClipped),
    ("spacing", Spacing),
    ("steps_offset", StepsOffset),
    ("rho", Rho),
    ("sigmas", Sigmas),
    ("final_sigma", FinalSigma),
)
_DEFAULTS = SolverConfig()
CONTEXT = "solver_options_context"
_NONE_DEFAULT = {"steps", "trained_betas", "sigmas", "nfe"}


class SolverOptions:
    """The parsed solver options of a command: ``solver(**overrides)`` builds the SolverConfig.

    ``explicit`` names the options the user typed; a model's own schedule (betas, prediction
    type, spacing) replaces dpmcli's defaults but never these.
    """

    def __init__(self, values: dict, explicit: frozenset[str] = frozenset()):
        self.values = values
        self.explicit = explicit

    def __call__(self, **overrides) -> SolverConfig:
        config = solver_config(**{**self.values, **overrides})
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
            default=None if name in _NONE_DEFAULT else getattr(_DEFAULTS, name),
            annotation=annotation,
        )
        for name, annotation in chosen
    ]

    defaults = {name: None if name in _NONE_DEFAULT else getattr(_DEFAULTS, name) for name in exclude}

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
