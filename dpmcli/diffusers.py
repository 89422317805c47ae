"""A drop-in scheduler for diffusers pipelines that steps with dpmcli's plan.

    from dpmcli.diffusers import DPMSolverScheduler

    pipe.scheduler = DPMSolverScheduler.from_config(pipe.scheduler.config, algo="dpmsolver++", order=3)
    stats = pipe.scheduler.record_statistics()
    image = pipe(prompt).images[0]

The schedule options keep diffusers' names, so the configuration of the pipeline's own
scheduler carries over; dpmcli's solver options (``algo``, ``order``, ``coefficients``,
``compat``, ...) are config parameters too and, when given, win over diffusers' words for the
same choice. Each model call is one row of a :class:`~dpmcli.plan.Plan`, advanced by
``solvers.step``: the same update as ``dpmcli sample`` and :class:`dpmcli.DPMSolver`.

Importing this module needs diffusers (``pip install "dpmcli[diffusers]"``); ``import dpmcli``
never loads it.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(f'dpmcli.diffusers needs the diffusers library: pip install "dpmcli[diffusers]" ({exc})') from exc

from . import solvers
from .config import SolverConfig
from .errors import ConfigError
from .brownian import noise_source
from .plan import Plan, build_plan, same_timestep, snap_integer_timesteps, tail_plan
from .recipe import SCHEDULE_FIELDS, SCHEDULER_SOLVER, Recipe, check_recipe_schedule, load_recipe, scheduler_parameters
from .sampler import StepEvent
from .schedule import Schedule, make_betas, rescale_to_zero_terminal_snr
from .stats import StepStatistics
from .vocabulary import SIGMA_FLAGS, flow_match_words, has_word, schedule_options, scheduler_words, solver_options

# dpmcli's names for choices diffusers also names; they are reset to None once resolved
DPMCLI_ALIASES = ("algo", "order", "final_sigma", "spacing")
# Command-line flags whose config parameter is not simply the flag with underscores.
PARAMETER_OF_FLAG = {
    "--steps": "num_inference_steps",
    "--train-steps": "num_train_timesteps",
    "--rescale-zero-snr": "rescale_betas_zero_snr",
    "--flow-mu": "mu",
}


def _option_error(exc: ConfigError, where: str = "DPMSolverScheduler") -> ConfigError:
    """The same one-line message, with the command-line flags renamed to config parameters."""

    def rename(match: re.Match) -> str:
        flag = match.group(0)
        return PARAMETER_OF_FLAG.get(flag, flag[2:].replace("-", "_"))

    return ConfigError(f"{where}: " + re.sub(r"--[a-z][a-z0-9-]*", rename, str(exc)))


def _timestep_value(timestep) -> tuple[float, float]:
    """(value, relative tolerance): a timestep stored in a narrow float type is only that exact."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            raise ConfigError("DPMSolverScheduler.step: the timestep tensor is empty")
        eps = torch.finfo(timestep.dtype).eps if timestep.is_floating_point() else 0.0
        value = float(timestep.reshape(-1)[0].item())
    else:
        eps, value = 0.0, float(timestep)
    # float32 timestep tensors of fractional grids hold the plan's float64 values rounded
    return value, max(eps, torch.finfo(torch.float32).eps)


class DPMSolverScheduler(SchedulerMixin, ConfigMixin):
    """DPM-Solver, DPM-Solver++ and their SDE forms as a diffusers scheduler, stepped by dpmcli's plan.

    Schedule parameters and their defaults are those of diffusers' DPMSolverMultistepScheduler.
    dpmcli's own names (``algo``, ``order``, ``spacing``, ``final_sigma``) default to None and,
    when given, win over ``algorithm_type``, ``solver_order``, ``timestep_spacing`` /
    ``use_*_sigmas`` and ``final_sigmas_type``; the resolved values are written back under
    diffusers' names, so the config reads the same to every diffusers scheduler.
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # model calls per entry of `timesteps` (pipelines' progress bars); not the solver order
    init_noise_sigma = 1.0  # VP schedules start from N(0, I)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        algo: str | None = None,
        order: int | None = None,
        spacing: str | None = None,
        final_sigma: str | None = None,
        method: str = "multistep",
        startup: str = "lower-order",
        coefficients: str = "published",
        compat: str = "none",
        rho: float = 7.0,
        eta: float | None = None,
        s_noise: float = 1.0,
        noise: str = "gaussian",
        seed: int = 0,
        corrector: str = "none",
        unic_variant: str = "bh2",
        final_decay: float = 0.0,
    ):
        parameters = dict(locals())  # every parameter, under diffusers' names and dpmcli's
        del parameters["self"]
        options = _options_of(parameters)
        self._base, schedule = _validated(options, num_train_timesteps)
        self._write_back_resolved(self._base)
        self._set_training_schedule(schedule)
        self._callbacks: list[Callable[[StepEvent], None]] = []
        self._plan: Plan | None = None
        self._recipe: Recipe | None = None
        self.num_inference_steps: int | None = None
        self._reset_run()

    @classmethod
    def from_recipe(cls, recipe, **kwargs) -> "DPMSolverScheduler":
        """A scheduler on a ``dpmcli tune`` recipe (a path or a :class:`~dpmcli.recipe.Recipe`): its schedule and solver are
        the config (``kwargs`` on top, its schedule kept); ``set_timesteps()`` (or its step count) runs the tuned grid."""
        found = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        scheduler = cls(**{**scheduler_parameters(found.config), **kwargs})
        check_recipe_schedule(found, {name: getattr(scheduler._base, name) for name in SCHEDULE_FIELDS})  # kwargs keep its schedule
        scheduler._recipe = found
        return scheduler

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``; a FlowMatch scheduler's config (SD3's, Flux's) is read as the flow schedule it describes."""
        if config is not None and "use_flow_sigmas" not in kwargs:
            kwargs = {**flow_match_words(dict(config)), **kwargs}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _set_training_schedule(self, schedule: Schedule) -> None:
        """The training schedule's tables, as diffusers' schedulers expose them before set_timesteps."""
        self.schedule, self.init_noise_sigma = schedule, schedule.init_noise_sigma
        self.timesteps = torch.arange(self.config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        if schedule.process == "vp":
            betas = make_betas(self._base, torch.float32)
            self.betas = rescale_to_zero_terminal_snr(betas) if self._base.rescale_zero_snr else betas
            self.alphas_cumprod = torch.from_numpy(np.array(schedule.alphas_cumprod)).float()
            self.sigmas = torch.from_numpy(np.array(schedule.sigmas)).float()
            return
        # flow has no beta table: the tables of the VP schedule with the same SNR, alpha^2 / (alpha^2 + sigma^2)
        column = schedule.sigma_of(schedule.lambda_at(np.arange(len(self), dtype=np.float64)))
        alpha, sigma, _ = schedule.coefficients(column)
        self.alphas_cumprod = torch.from_numpy(alpha**2 / (alpha**2 + sigma**2)).float()
        self.betas = 1.0 - self.alphas_cumprod / torch.cat([torch.ones(1), self.alphas_cumprod[:-1]])
        self.sigmas = torch.from_numpy(column).float()  # the process's own sigma column: s = t / T for flow

    def _write_back_resolved(self, base: SolverConfig) -> None:
        """Record the resolved choices under diffusers' names; keep dpmcli's names only where diffusers has none."""
        flow = base.process == "flow"
        # diffusers' flow mode has one grid (use_flow_sigmas): a flow spacing has no word in diffusers' config
        resolved = {key: getattr(base, key) for key in ("algo", "order", "final_sigma", "solver_type") + (() if flow else ("spacing",))}
        updates = {**dict.fromkeys(SIGMA_FLAGS, False), **scheduler_words(resolved), **dict.fromkeys(DPMCLI_ALIASES)}
        if base.spacing != "linspace" if flow else not has_word("spacing", base.spacing):
            updates["spacing"] = base.spacing  # time-uniform, time-quadratic (flow: every grid but its own): dpmcli's grids
        registered = dict(self.config)
        changed = {key: value for key, value in updates.items() if registered.get(key) != value}
        if not changed:
            return
        # from_config skips keys listed as defaults: a resolved value that differs from its default
        # must be read, and an alias reset to None must not reach schedulers that do not know it.
        parameters = inspect.signature(type(self).__init__).parameters
        defaults = set(registered.get("_use_default_values", ()))
        wanted = set(defaults)
        for key, value in changed.items():
            if value != parameters[key].default:
                wanted.discard(key)
            elif key in DPMCLI_ALIASES:
                wanted.add(key)
        if wanted != defaults:
            # built as diffusers' register_to_config builds it (a set difference over the parameter
            # names), so that equal configs list their defaults in the same order
            names = [name for name in parameters if name != "self"]
            changed["_use_default_values"] = list(set(names) - (set(names) - wanted))
        self.register_to_config(**changed)

    # ------------------------------------------------------------------ state

    def _reset_run(self) -> None:
        self._active: Plan | None = None  # the plan being stepped: the whole one, or its tail for img2img
        self._offset = 0  # index of the active plan's first row in `timesteps`
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._state = solvers.START  # the history and anchor solvers.step carries between rows
        self._noise = noise_source(self.config.noise, self.config.seed, self._plan, "DPMSolverScheduler: noise")

    @property
    def plan(self) -> Plan | None:
        """The plan of the last ``set_timesteps`` (None before): one row per entry of ``timesteps``."""
        return self._plan

    @property
    def solver_config(self) -> SolverConfig:
        """The resolved dpmcli options (with the step count of the last ``set_timesteps``)."""
        return self._plan.config if self._plan is not None else self._base

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next model call; None until the first ``step``."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at ``timesteps[begin_index]`` (img2img pipelines call this)."""
        self._begin_index = int(begin_index)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ grid

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None, mu: float | None = None,
        timesteps: list[int] | None = None, *, sigmas: list[float] | None = None,
    ) -> None:
        """Build the plan for a run: ``num_inference_steps`` steps on the configured grid, or a custom grid.

        ``timesteps`` (training timesteps, non-increasing) or ``sigmas`` (the grid's sigma column, decreasing:
        diffusers' sigma, or s for flow) give the model calls' noise levels; the final sigma
        (``final_sigmas_type``) is appended unless ``sigmas`` already ends in 0. With ``compat="diffusers"``
        only ``timesteps`` exist, truncated to integers as diffusers truncates them. ``mu`` (flow configs with
        ``use_dynamic_shifting``) shifts this run's flow grid by exp(mu) instead of ``flow_shift``. A grid
        that repeats a timestep is built (with a warning); in compat mode the rows diffusers would turn into
        NaN raise a NumericalError when stepped.
        """
        if self._recipe is not None and timesteps is None and sigmas is None:
            steps = self._recipe.config.steps
            if num_inference_steps not in (None, steps):
                raise ConfigError(f"DPMSolverScheduler.set_timesteps: the recipe {self._recipe.name} is a {steps}-step grid; use "
                                  f"num_inference_steps={steps}, or pass sigmas or timesteps")
            num_inference_steps, sigmas = None, self._recipe.config.sigmas  # its last sigma included: nothing appended
        if sum(arg is not None for arg in (num_inference_steps, timesteps, sigmas)) != 1:
            raise ConfigError("DPMSolverScheduler.set_timesteps: pass exactly one of num_inference_steps, timesteps, sigmas")
        base = self._base if mu is None else self._dynamic_shift(mu, num_inference_steps is None)
        if num_inference_steps is not None:
            options = {"steps": int(num_inference_steps)}
        elif timesteps is not None:
            values = timesteps.cpu().numpy() if isinstance(timesteps, torch.Tensor) else timesteps
            options = {"timesteps": tuple(float(t) for t in np.asarray(values, dtype=np.float64).reshape(-1))}
        else:
            recipe = self._recipe is not None and sigmas is self._recipe.config.sigmas
            options = {"sigmas": tuple(sigmas) if recipe else self._custom_sigmas(sigmas)}
        try:
            plan = build_plan(base.with_options(**options))
        except ConfigError as error:
            raise _option_error(error, "DPMSolverScheduler.set_timesteps") from None
        if sigmas is not None:
            plan = snap_integer_timesteps(plan)
        for message in plan.warnings:
            warnings.warn(f"DPMSolverScheduler: {message}", stacklevel=2)
        self._plan = plan
        values = plan.timestep_values
        dtype = torch.int64 if all(isinstance(t, int) for t in values) else torch.float32
        self.timesteps = torch.tensor(values, dtype=dtype, device=device)
        self.sigmas = torch.from_numpy(plan.sigmas).float()
        self.num_inference_steps = plan.steps
        self._reset_run()

    def _dynamic_shift(self, mu, custom: bool) -> SolverConfig:
        """The base config shifted by exp(mu), as use_dynamic_shifting asks (diffusers' exponential time shift)."""
        if self._base.process != "flow" or not self.config.use_dynamic_shifting:
            raise ConfigError("DPMSolverScheduler.set_timesteps: mu needs a flow config with use_dynamic_shifting=True (use_flow_sigmas)")
        if custom:
            raise ConfigError("DPMSolverScheduler.set_timesteps: mu shifts the configured flow grid, not custom timesteps or sigmas; pass one of them")
        return self._base.with_options(flow_mu=float(mu), flow_shift=1.0)

    def _custom_sigmas(self, sigmas) -> tuple[float, ...]:
        levels = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if levels.size and levels[-1] == 0.0:
            return tuple(float(s) for s in levels)
        sched = self.schedule  # sigma-min: where the process's grids end (VP: the training table's smallest sigma)
        sigma_min = float(sched.sigmas[0]) if sched.process == "vp" else float(sched.sigma_of(sched.lambda_limits[1]))
        return tuple(float(s) for s in levels) + (0.0 if self._base.final_sigma == "zero" else sigma_min,)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """VP and flow latents go to the network as they are (the schedule's input scale is 1)."""
        return sample

    # ------------------------------------------------------------------ callbacks

    def add_callback(self, callback: Callable[[StepEvent], None]) -> Callable[[StepEvent], None]:
        """Call ``callback(event)`` with a :class:`~dpmcli.sampler.StepEvent` after every model call, in every run."""
        self._callbacks.append(callback)
        return callback

    def remove_callback(self, callback: Callable[[StepEvent], None]) -> None:
        self._callbacks.remove(callback)

    def record_statistics(self) -> StepStatistics:
        """A :class:`~dpmcli.stats.StepStatistics` whose ``rows`` gain one row per model call, as ``dpmcli sample`` prints."""
        return self.add_callback(StepStatistics())

    # ------------------------------------------------------------------ stepping

    def _require_plan(self, where: str) -> Plan:
        if self._plan is None:
            raise ConfigError(f"DPMSolverScheduler.{where}: call set_timesteps(num_inference_steps) first")
        return self._plan

    def _find_row(self, timestep) -> int | None:
        given, tolerance = _timestep_value(timestep)
        for index, expected in enumerate(self._plan.timestep_values):
            if same_timestep(given, tolerance, expected):
                return index
        return None

    def _start(self, timestep) -> None:
        """The first step of a run: from ``begin_index``, or from where the timestep sits on the grid."""
        begin = self._begin_index
        if begin is None:
            # a pipeline that slices `timesteps` without set_begin_index starts where its first timestep is
            given, tolerance = _timestep_value(timestep)
            found = None if same_timestep(given, tolerance, self._plan.timestep_values[0]) else self._find_row(timestep)
            begin = 0 if found is None else found
        if not 0 <= begin < self._plan.nfe:
            raise ConfigError(f"DPMSolverScheduler: begin_index {begin} is outside 0..{self._plan.nfe - 1}")
        self._active = self._plan if begin == 0 else self._tail_plan(begin)
        if begin:  # the tail's rows number their noise draws from its own first step
            self._noise = noise_source(self.config.noise, self.config.seed, self._active, "DPMSolverScheduler: noise")
        self._offset = begin
        self._step_index = begin

    def _tail_plan(self, begin: int) -> Plan:
        """The plan for a run that starts at model call ``begin``: the rest of the grid, with a fresh warm-up."""
        try:
            return tail_plan(self._plan, begin, "DPMSolverScheduler")
        except ConfigError as error:
            own = str(error).startswith("DPMSolverScheduler")  # tail_plan's own refusals name the scheduler already
            raise (error if own else _option_error(error, f"DPMSolverScheduler: starting at timesteps[{begin}]")) from None

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None, variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance ``sample`` from ``timestep`` to the latent of the next model call (or the final one).

        SDE noise: ``variance_noise`` (standard normal, shaped like ``sample``) if given, else drawn
        with ``generator`` as diffusers draws it, else from dpmcli's stream seeded by ``seed``.
        """
        plan = self._require_plan("step")
        if self._step_index is None:
            self._start(timestep)
        index = self._step_index
        if index >= plan.nfe:
            raise ConfigError(
                f"DPMSolverScheduler.step: all {plan.nfe} steps of this run are done; call set_timesteps to sample again"
            )
        expected = plan.timestep_values[index]
        given, tolerance = _timestep_value(timestep)
        if not same_timestep(given, tolerance, expected):
            raise ConfigError(
                f"DPMSolverScheduler.step: got timestep {given:g}, but step {index} of this run is at timestep {expected:g}; "
                "step through scheduler.timesteps in order"
            )
        cfg = plan.config
        row = self._active.rows[index - self._offset]
        out = model_output
        if self.config.variance_type in ("learned", "learned_range") and out.shape[1] == 2 * sample.shape[1]:
            out = out[:, : sample.shape[1]]  # the second half of the channels is the learned variance
        # the update runs in float32 at least; float64 latents stay float64
        work = torch.float64 if torch.float64 in (sample.dtype, out.dtype) else torch.float32
        x, out = sample.to(work), out.to(device=sample.device, dtype=work)
        z = None
        if cfg.is_sde and variance_noise is not None:
            z = variance_noise.to(device=x.device, dtype=work)
        elif cfg.is_sde and generator is not None and self.config.noise == "gaussian":
            # drawn at every SDE step, as diffusers draws it, so a shared generator stays in step
            z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(work)
        x_next, self._state = solvers.step(row, x, out, self._state, solvers.scaled_noise(row, x, self._noise, z))
        self._step_index = index + 1
        if self._callbacks:
            event = StepEvent(self._active, row, x, out, x_next)
            for callback in self._callbacks:
                callback(event)
        prev_sample = x_next.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """alpha_t * x0 + sigma_t * noise at the given timesteps (img2img, inpainting).

        During a run the noise level is that of the next model call (or of ``begin_index`` before
        the first step), as diffusers does; otherwise each timestep's level, on the grid of
        ``set_timesteps`` when it is there, else from the training schedule.
        """
        t = torch.as_tensor(timesteps).reshape(-1)
        plan = self._plan
        index = self._step_index if self._step_index is not None else self._begin_index
        if plan is not None and index is not None:
            level = float(plan.evaluations[index].sigma) if index < plan.nfe else float(plan.sigmas[-1])
            levels = np.full(len(t), level)
        else:
            levels = np.empty(len(t))
            for k, timestep in enumerate(t):
                row = self._find_row(timestep) if plan is not None else None
                if row is not None:
                    levels[k] = plan.evaluations[row].sigma
                else:
                    levels[k] = self.schedule.sigma_of(float(self.schedule.lambda_at(float(timestep))))
        alpha, sigma, _ = self.schedule.coefficients(levels)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        like = {"device": original_samples.device, "dtype": original_samples.dtype}
        return torch.as_tensor(alpha, **like).reshape(shape) * original_samples + torch.as_tensor(sigma, **like).reshape(shape) * noise


def _options_of(parameters: dict) -> dict:
    """SolverConfig options of the scheduler's parameters: diffusers' words read as every config is read
    (:mod:`dpmcli.vocabulary`), dpmcli's own names (``algo``, ``order``, ``spacing``, ``final_sigma``) winning."""
    options = {
        **solver_options(parameters),
        **schedule_options(parameters, where="DPMSolverScheduler: the config"),
        **{key: parameters[key] for key in SCHEDULER_SOLVER},
        "rho": float(parameters["rho"]),
        "thresholding": bool(parameters["thresholding"]),
        "dynamic_thresholding_ratio": float(parameters["dynamic_thresholding_ratio"]),
        "sample_max_value": float(parameters["sample_max_value"]),
    }
    if options.get("process") != "flow":
        for key in ("beta_start", "beta_end"):
            options.setdefault(key, float(parameters[key]))  # kept as given beside a table of betas
    elif parameters["use_dynamic_shifting"]:
        options["flow_shift"] = float(parameters["flow_shift"])  # without mu, set_timesteps shifts by it, as diffusers does
    options.update({key: parameters[key] for key in DPMCLI_ALIASES if parameters[key] is not None})
    return options


def _validated(options: dict, num_train_timesteps: int) -> tuple[SolverConfig, Schedule]:
    """The validated base config (a placeholder step count: set_timesteps supplies the real one) and its schedule."""
    trained_betas, compat = options.get("trained_betas"), options["compat"]
    if trained_betas is not None and len(trained_betas) != num_train_timesteps and compat != "diffusers":
        # diffusers keeps num_train_timesteps for its grids (compat does too, and says so at
        # set_timesteps); dpmcli's own plan takes the table's length
        warnings.warn(
            f"DPMSolverScheduler: trained_betas holds {len(trained_betas)} values but num_train_timesteps is "
            f"{num_train_timesteps}; the betas set the training schedule: timesteps 0..{len(trained_betas) - 1}",
            stacklevel=4,  # the caller of DPMSolverScheduler(...), past __init__ and register_to_config
        )
    try:
        placeholder = len(trained_betas) if trained_betas is not None and compat != "diffusers" else num_train_timesteps
        base = SolverConfig(steps=placeholder, **options).validated()
        schedule = Schedule.from_config(base)
    except ConfigError as error:
        raise _option_error(error) from None
    if base.method == "adaptive":
        raise ConfigError("DPMSolverScheduler: method 'adaptive' picks its steps while it runs; use dpmcli.adaptive.sample_adaptive")
    return base, schedule


__all__ = ["DPMSolverScheduler"]
