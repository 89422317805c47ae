"""diffusers' own ODE schedulers, stepped on a dpmcli model: the peers of ``compare --peers diffusers``.

A :class:`Peer` names one of diffusers' scheduler classes, its config words beyond the schedule and
its number of steps; :func:`run_peer` builds it from the config's schedule (through
:func:`dpmcli.vocabulary.scheduler_words`, the one translation), steps it with a bound dpmcli model
from dpmcli's x_T and hands back the samples in dpmcli's convention, with the sigma grid it ran on,
so that the caller can build the matching exact ODE reference. :func:`compare_peers` lists the rows
``compare`` adds beside a dpmcli run, :func:`sweep_peers` every configuration a benchmark sweeps.

Conventions, read from diffusers' sources (0.42):

* DPMSolver, UniPC, DEIS, FlowMatch and EDM schedulers keep dpmcli's latent x = alpha x0 + sigma eps
  (EDM: alpha = 1, and their ``scale_model_input`` is the c_in x that dpmcli's EDM model is given);
  Euler and Heun (VP) keep x / alpha_t, and their model input, latent / sqrt(sigma^2 + 1), is x.
  Their ``init_noise_sigma`` is sigma_max, not 1 / alpha_T, on linspace and trailing grids, so
  x_T is converted here with the grid's own first sigma, never with it.
* Timesteps are in the units dpmcli's bound models take (VP: training timesteps; flow: T s; EDM:
  c_noise = ln(sigma) / 4) and are passed on as diffusers gives them: rounded or truncated to
  integers where diffusers does so (DPMSolver, UniPC and DEIS store int64 timesteps, also for flow).
* Every class is run in float32 (most upcast their sample to it; all hold float32 sigmas); the
  samples come back in x_T's dtype. Only ODE schedulers are run: no generator, no noise.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .config import MAX_ORDER, SolverConfig
from .plan import Plan, build_plan
from .schedule import Schedule
from .errors import ConfigError
from .vocabulary import SIGMA_FLAGS, TIMESTEP_SPACINGS, has_word, scheduler_words

MISSING = "--peers: diffusers: needs the diffusers extra (pip install 'dpmcli[diffusers]')"
WORK_DTYPE = torch.float32  # diffusers' own working precision (see the module docstring)
VP_PREDICTIONS = ("epsilon", "sample", "v_prediction")
EDM_PREDICTIONS = ("epsilon", "v_prediction")
FINALS = ("zero", "sigma-min")
# the options that fix the process the model was trained on: a class that cannot say them is no peer
TRAINING = ("train_steps", "beta_schedule", "beta_start", "beta_end", "trained_betas", "rescale_zero_snr", "prediction_type", "process")
# grid and solver options a class may lack: it then runs without them, and compare_peers says so
EXTRAS = ("lambda_min_clipped", "steps_offset", "thresholding", "dynamic_thresholding_ratio", "sample_max_value")
# EDM's schedule words are spelled as SolverConfig's fields
EDM_WORDS = ("sigma_min", "sigma_max", "sigma_data", "rho")
EDM_GRIDS = ("karras", "exponential")  # EDM schedulers' sigma_schedule, named as dpmcli's spacings
# diffusers' word for a timestep grid and for the final sigma, asked of the vocabulary (it owns them)
SPACING_WORD = next(iter(scheduler_words({"spacing": "linspace"})))
FINAL_WORD = next(iter(scheduler_words({"final_sigma": "zero"})))


@dataclass(frozen=True)
class Kind:
    """What one diffusers scheduler class is, read from its source."""

    short: str  # its name in labels
    processes: tuple[str, ...]  # the noise processes it samples
    solver_types: tuple[str, ...] = ()  # its solver_type values (the first where the type changes nothing)
    algos: tuple[str, ...] = ()  # its ODE algorithm_type values
    max_order: int = 0  # its highest solver_order (0: it has none)
    typed_from: int = 2  # the lowest order whose result depends on the solver type
    calls: int = 1  # model calls per step (Heun: 2, but its last step, onto sigma 0, is Euler's: 1)
    over_alpha: bool = False  # latent x / alpha_t (k-diffusion's convention) instead of x
    predictions: tuple[str, ...] = (*VP_PREDICTIONS, "flow_prediction")
    native_flow: bool = False  # a FlowMatch class: flow by construction, its shift word is `shift`


DPM_TYPES, DPM_ALGOS, VELOCITY = ("midpoint", "heun"), ("dpmsolver++", "dpmsolver"), ("flow_prediction",)
KINDS = {
    "DPMSolverMultistepScheduler": Kind("DPMSolver multistep", ("vp", "flow"), DPM_TYPES, DPM_ALGOS, 3),
    "DPMSolverSinglestepScheduler": Kind("DPMSolver singlestep", ("vp", "flow"), DPM_TYPES, DPM_ALGOS, 3),
    # UniPC takes any order; its bh1/bh2 choice reaches the first-order corrector too
    "UniPCMultistepScheduler": Kind("UniPC", ("vp", "flow"), ("bh1", "bh2"), max_order=MAX_ORDER, typed_from=1),
    # DEIS has no final-sigma word: linspace grids end at the table's sigma_min, the others repeat their last sigma
    "DEISMultistepScheduler": Kind("DEIS", ("vp", "flow"), ("logrho",), max_order=3),
    "EulerDiscreteScheduler": Kind("Euler", ("vp",), over_alpha=True, predictions=VP_PREDICTIONS),
    "HeunDiscreteScheduler": Kind("Heun", ("vp",), calls=2, over_alpha=True, predictions=VP_PREDICTIONS),
    "FlowMatchEulerDiscreteScheduler": Kind("FlowMatch Euler", ("flow",), predictions=VELOCITY, native_flow=True),
    "FlowMatchHeunDiscreteScheduler": Kind("FlowMatch Heun", ("flow",), calls=2, predictions=VELOCITY, native_flow=True),
    "EDMEulerScheduler": Kind("EDM Euler", ("edm",), predictions=EDM_PREDICTIONS),
    "EDMDPMSolverMultistepScheduler": Kind("EDM DPMSolver multistep", ("edm",), DPM_TYPES, ("dpmsolver++",), 3, predictions=EDM_PREDICTIONS),
}
# the classes each process's sweep runs
MULTI_ORDER = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
SWEPT = {"vp": MULTI_ORDER, "flow": MULTI_ORDER, "edm": ("EDMDPMSolverMultistepScheduler",)}


def _schedule_options(cfg: SolverConfig) -> dict:
    return {name: getattr(cfg, name) for name in TRAINING}


# what a class that lacks a word does anyway: the word's value for dpmcli's defaults
DEFAULT_WORDS = scheduler_words({**_schedule_options(SolverConfig()), **{n: getattr(SolverConfig(), n) for n in EXTRAS}})


@dataclass(frozen=True)
class Peer:
    """One diffusers scheduler configuration: its class, its words beyond the schedule, its steps."""

    scheduler: str  # the diffusers class name
    options: dict = field(default_factory=dict)  # diffusers' config words: solver_order, solver_type, grid flags...
    steps: int = 20  # num_inference_steps
    note: str = ""  # what it could not follow of the dpmcli run beside it (compare_peers)

    def __hash__(self) -> int:  # options is a dict (and may hold lists): hash what it says
        return hash((self.scheduler, repr(sorted(self.options.items())), self.steps, self.note))

    @property
    def kind(self) -> Kind:
        if self.scheduler not in KINDS:
            raise ConfigError(f"--peers: diffusers: {self.scheduler} is not one of the ODE schedulers peers run ({', '.join(KINDS)})")
        return KINDS[self.scheduler]

    @property
    def nfe(self) -> int:
        """Model calls: one per step; Heun's 2N - 1 (each step two, the last, onto sigma 0, one)."""
        return self.steps if self.kind.calls == 1 else 2 * self.steps - 1

    @property
    def label(self) -> str:
        """``diffusers UniPC bh2 order 2``, ``diffusers DEIS order 3 karras``, ``diffusers Heun``."""
        kind, o = self.kind, self.options
        order = o.get("solver_order")
        parts = ["diffusers", kind.short]
        if len(kind.algos) > 1 and o.get("algorithm_type"):
            parts.append(o["algorithm_type"])
        if len(kind.solver_types) > 1 and o.get("solver_type") and (order or 1) >= kind.typed_from:
            parts.append(o["solver_type"])
        if order is not None:
            parts.append(f"order {order}")
        grid = next((g for flag, g in SIGMA_FLAGS.items() if o.get(flag)), None) or o.get(SPACING_WORD) or o.get("sigma_schedule")
        if grid and grid != "linspace":
            parts.append(grid)
        if o.get(FINAL_WORD) == "sigma_min":
            parts.append("sigma-min end")
        if o.get("disable_corrector"):
            every = len(o["disable_corrector"]) >= self.steps
            parts.append("no corrector" if every else f"corrector off at {len(o['disable_corrector'])} steps")
        if o.get("lower_order_final") is False:
            parts.append("no lower-order final")
        return " ".join(parts)


@dataclass
class PeerRun:
    """A peer's run: samples in dpmcli's convention (x_T's dtype), counted model calls, the N+1
    sigmas it ran from and to (dpmcli's grid column: VP sigma/alpha, flow s, EDM sigma), loop seconds."""

    samples: torch.Tensor
    nfe: int
    sigmas: np.ndarray
    seconds: float


def _diffusers():
    """The diffusers package, or the one-line error that names the extra."""
    try:
        import diffusers
    except ImportError as exc:
        raise ConfigError(MISSING) from exc
    return diffusers


def _parameters(name: str) -> dict:
    """The config words of a diffusers class (its ``__init__`` parameters) and their defaults."""
    cls = getattr(_diffusers(), name)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def _check_nfe(nfe) -> None:
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ConfigError(f"--peers: diffusers: the NFE budget must be a positive integer, got {nfe!r}")


def schedule_words(cfg: SolverConfig, kind: Kind) -> tuple[dict, dict]:
    """(training words, extra words) of ``cfg`` for a class of ``kind``: the process the model was
    trained on, and the grid and solver options that come with the config (see EXTRAS)."""
    training = scheduler_words(_schedule_options(cfg))
    if cfg.process == "flow":
        training.update(scheduler_words({"flow_shift": cfg.shift}))  # flow_mu: exp(mu) is the same static shift
    if cfg.process == "edm":
        training.update({name: float(getattr(cfg, name)) for name in EDM_WORDS})
    if kind.native_flow:
        # a FlowMatch class is flow by construction and always takes the velocity; its shift word is `shift`
        training.pop("use_flow_sigmas", None)
        training.pop("prediction_type", None)
        training["shift"] = training.pop("flow_shift", 1.0)
    return training, scheduler_words({name: getattr(cfg, name) for name in EXTRAS})


def _unsaid(words: dict, parameters: dict) -> list[str]:
    """The words a class has no parameter for, where they ask for more than dpmcli's default."""
    return [k for k, v in words.items() if k not in parameters and (k not in DEFAULT_WORDS or v != DEFAULT_WORDS[k])]


def _follows(kind: Kind, cfg: SolverConfig, parameters: dict) -> bool:
    """Whether a class can sample the process ``cfg`` describes, and read the model's prediction."""
    if cfg.process not in kind.processes or _unread(kind, {}, cfg):
        return False
    return not _unsaid(schedule_words(cfg, kind)[0], parameters)


def _grid_words(parameters: dict, grid: str) -> dict | None:
    """diffusers' words for a dpmcli grid on a class, or None where it has none (linspace: every
    class's default timestep grid, also for those without a spacing word)."""
    if not has_word("spacing", grid):
        return None
    words = scheduler_words({"spacing": grid})
    if grid == "linspace":
        return {k: v for k, v in words.items() if k in parameters}
    return words if all(k in parameters for k in words) else None


def _unread(kind: Kind, options: dict, cfg: SolverConfig) -> str:
    """Why a class with these options cannot read the model's prediction type ("" where it can)."""
    prediction = cfg.prediction_type
    if prediction not in kind.predictions:
        return f"it reads {', '.join(kind.predictions)}"
    if cfg.process == "flow" and prediction == "v_prediction" and not kind.native_flow:
        return "use_flow_sigmas converts v with the VP formula, which is not v on a flow path"
    if prediction == "flow_prediction" and options.get("algorithm_type") == "dpmsolver":
        return "its noise-prediction form has no flow_prediction"
    return ""


def build_scheduler(peer: Peer, cfg: SolverConfig, device=None):
    """The peer's scheduler, set to its steps: cfg's schedule words and the peer's options.

    Raises a one-line ConfigError for a class that cannot follow cfg's training schedule, an
    option the class has no word for, an SDE configuration, or a step count other than peer.nfe.
    """
    kind = peer.kind
    if str(peer.options.get("algorithm_type", "")).startswith("sde-") or peer.options.get("stochastic_sampling"):
        raise ConfigError(f"--peers: diffusers: {peer.label} draws noise; peers are ODE schedulers only")
    parameters = _parameters(peer.scheduler)
    unknown = [k for k in peer.options if k not in parameters]
    if unknown:
        raise ConfigError(f"--peers: diffusers: {peer.scheduler} has no {', '.join(unknown)}")
    if cfg.process not in kind.processes:
        raise ConfigError(f"--peers: diffusers: {peer.scheduler} does not sample --process {cfg.process}")
    why = _unread(kind, peer.options, cfg)
    if why:
        raise ConfigError(f"--peers: diffusers: {peer.label} cannot read --prediction-type {cfg.prediction_type} ({why})")
    training, extra = schedule_words(cfg, kind)
    unsaid = _unsaid(training, parameters)
    if unsaid:
        raise ConfigError(f"--peers: diffusers: {peer.scheduler} has no {', '.join(unsaid)}; it cannot follow this model's schedule")
    words = {k: v for k, v in {**training, **extra}.items() if k in parameters}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates dpmsolver; the sweep runs it on purpose
        scheduler = getattr(_diffusers(), peer.scheduler)(**{**words, **peer.options})
    scheduler.set_timesteps(peer.steps, device=device)
    scheduler.set_begin_index(0)  # step from the first timestep, even where a grid repeats one
    if len(scheduler.timesteps) != peer.nfe:
        raise ConfigError(f"--peers: diffusers: {peer.label} makes {len(scheduler.timesteps)} model calls at {peer.steps} steps, not {peer.nfe}")
    return scheduler


def nan_end(peer: Peer) -> bool:
    """Whether diffusers' arithmetic turns the step onto sigma 0 into NaN: UniPC bh1 takes B(h) = h,
    -inf there, and multiplies it by 0 (bh2's B(h) = e^h - 1 is -1)."""
    bh1 = peer.scheduler == "UniPCMultistepScheduler" and peer.options.get("solver_type") == "bh1"
    return bh1 and peer.options.get(FINAL_WORD, "zero") == "zero"


def grid_sigmas(scheduler, kind: Kind) -> np.ndarray:
    """The N+1 sigmas a scheduler steps through, float64; Heun's doubled entries taken once."""
    sigmas = scheduler.sigmas.detach().cpu().double().numpy()
    if kind.calls == 2:
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    return sigmas


def run_peer(peer: Peer, cfg: SolverConfig, denoise, x_T: torch.Tensor) -> PeerRun:
    """Step the peer's scheduler with ``denoise(x, t)`` (a dpmcli model bound to cfg's plan) from x_T.

    x_T and the samples are dpmcli latents (x = alpha x0 + sigma eps) at the grid's first and last
    sigma; the model gets what ``scale_model_input`` gives (dpmcli's x; EDM: c_in x) and the
    scheduler's timestep as a Python number.
    """
    kind = peer.kind
    scheduler = build_scheduler(peer, cfg, x_T.device)
    sigmas = grid_sigmas(scheduler, kind)
    # Euler and Heun hold x / alpha_t, with 1 / alpha_t = sqrt(sigma^2 + 1) at their own grid's ends
    start = math.sqrt(sigmas[0] ** 2 + 1.0) if kind.over_alpha else 1.0
    end = math.sqrt(sigmas[-1] ** 2 + 1.0) if kind.over_alpha else 1.0
    latent = (x_T.to(torch.float64) * start).to(WORK_DTYPE)
    calls = 0
    began = time.perf_counter()
    scale = getattr(scheduler, "scale_model_input", None)  # FlowMatch classes have none: their input is the latent
    for t in scheduler.timesteps:
        model_input = latent if scale is None else scale(latent, t)
        output = denoise(model_input, float(t)).to(WORK_DTYPE)
        calls += 1
        latent = scheduler.step(output, t, latent, return_dict=False)[0]
    if latent.is_cuda:
        torch.cuda.synchronize(latent.device)
    seconds = time.perf_counter() - began
    samples = (latent.to(torch.float64) / end).to(x_T.dtype)
    return PeerRun(samples, calls, sigmas, seconds)


def reference_plan(cfg: SolverConfig, sigmas) -> Plan:
    """A first-order dpmcli plan on a peer's sigmas: the lambda range its ground truth spans (compare scores it on that).

    diffusers' float32 top sigma can lie a few ulps above the schedule's, and FlowMatch grids start
    at s = 1 (lambda = -inf): the first sigma is clamped to the top of the schedule's trained range.
    """
    schedule = Schedule.from_config(cfg.validated())
    top = float(schedule.sigma_of(schedule.trained_limits[0]))
    values = (min(float(sigmas[0]), top), *(float(s) for s in sigmas[1:]))
    return build_plan(cfg.with_options(
        sigmas=values, timesteps=None, nfe=None, order=1, algo="dpmsolver++", method="multistep", startup="lower-order",
        compat="none", corrector="none", final_decay=0.0, coefficients="published", eta=None, s_noise=1.0,
    ))


def peers_identity(peers: str) -> str:
    """What ran the peer rows, for a sweep's record (a resumed sweep must run the same library): 'diffusers 0.42.1'."""
    if peers != "diffusers":
        return peers
    return f"diffusers {getattr(_diffusers(), '__version__', '?')}"


def peers_beside(configs) -> list[tuple[Peer, SolverConfig]]:
    """compare_peers for every distinct (NFE, order, grid) among dpmcli runs' configs, each peer once."""
    out: dict = {}
    for cfg, nfe in configs:
        for peer in compare_peers(cfg, nfe):
            out.setdefault((peer.label, peer.steps), (peer, cfg))
    return list(out.values())


def _compare_grid(kind: Kind, cfg: SolverConfig, parameters: dict) -> tuple[dict, list[str]]:
    """The grid words of cfg's step grid on a class, and notes where the class runs another grid."""
    spacing = "custom" if cfg.sigmas is not None or cfg.timesteps is not None else cfg.spacing
    if cfg.process == "flow":
        # diffusers has one flow grid (uniform in s, then shifted): dpmcli's linspace and time-uniform
        same = spacing in ("linspace", "time-uniform")
        return {}, [] if same else [f"{kind.short} has no {spacing} flow grid; ran diffusers' flow grid"]
    if cfg.process == "edm":
        grid = spacing if spacing in EDM_GRIDS else "karras"
        notes = [] if grid == spacing else [f"{kind.short} has no {spacing} grid; ran karras"]
        return {"sigma_schedule": grid}, notes
    words = _grid_words(parameters, spacing)
    if words is None:
        return _grid_words(parameters, "linspace"), [f"{kind.short} has no {spacing} grid; ran linspace"]
    return words, []


def _compare_peer(name: str, cfg: SolverConfig, steps: int, solver: dict) -> Peer | None:
    """The compare row of one class beside cfg's run, or None where it cannot sample cfg's process."""
    kind, parameters = KINDS[name], _parameters(name)
    if not _follows(kind, cfg, parameters):
        return None
    grid, notes = _compare_grid(kind, cfg, parameters)
    asked = FINAL_WORD in parameters and cfg.final_sigma in FINALS
    final = scheduler_words({"final_sigma": cfg.final_sigma}) if asked else {}
    notes += [f"{kind.short} has no {word}; ran without it" for word in _unsaid(schedule_words(cfg, kind)[1], parameters)]
    solver = {**solver, "lower_order_final": cfg.lower_order_final}
    options = {**{k: v for k, v in scheduler_words(solver).items() if k in parameters}, **grid}
    if nan_end(Peer(name, {**options, **final}, steps)):
        final = scheduler_words({"final_sigma": "sigma-min"})
        notes.append(f"{kind.short} {solver['solver_type']} steps onto sigma 0 as NaN in diffusers")
    peer = Peer(name, {**options, **final}, steps)
    # where the class has no word for cfg's final sigma (DEIS, Heun, FlowMatch) or refuses it: where it ends
    end = float(grid_sigmas(build_scheduler(peer, cfg), kind)[-1])
    if (end == 0.0) != (cfg.final_sigma == "zero"):
        notes.append(f"{kind.short} ends at sigma {end:.4g}")
    return replace(peer, note="; ".join(notes))


def compare_peers(cfg: SolverConfig, nfe: int) -> list[Peer]:
    """The rows ``compare --peers diffusers`` adds beside a dpmcli run of ``nfe`` model calls on cfg.

    VP: UniPC bh1 and bh2 (at cfg's order, at most ``nfe``), DEIS (cfg's order within 1-3), Euler
    and Heun (N = (nfe + 1) // 2 steps: 2N - 1 <= nfe calls, equal for odd budgets). Flow: UniPC
    and DEIS on diffusers' flow grid (use_flow_sigmas, cfg's shift), FlowMatch Euler and Heun for
    flow_prediction models. EDM: EDM Euler (karras or exponential).

    cfg's grid options are used where the class has a word for them. Where it has none (dpmcli's
    own grids: time-uniform, time-quadratic, logsnr, custom; a final sigma or a clipping it lacks) the class runs its default grid and the peer's ``note`` says so, with the
    sigma it ends at when that is not cfg's: the row stays, and its sigmas say what it ran. UniPC
    bh1 ends at sigma-min, since onto sigma 0 diffusers' bh1 gives NaN. A class that cannot sample
    cfg's training schedule or read its prediction type is left out.
    """
    _check_nfe(nfe)
    _diffusers()
    clipped = max(1, min(cfg.order, 3))
    unipc = max(1, min(cfg.order, nfe))
    heun = (nfe + 1) // 2
    rows = [
        ("UniPCMultistepScheduler", nfe, {"order": unipc, "solver_type": "bh1"}),
        ("UniPCMultistepScheduler", nfe, {"order": unipc, "solver_type": "bh2"}),
        ("DEISMultistepScheduler", nfe, {"order": clipped}),
        ("EulerDiscreteScheduler", nfe, {}),
        ("HeunDiscreteScheduler", heun, {}),
        ("FlowMatchEulerDiscreteScheduler", nfe, {}),
        ("FlowMatchHeunDiscreteScheduler", heun, {}),
        ("EDMEulerScheduler", nfe, {}),
    ]
    peers = [_compare_peer(name, cfg, steps, solver) for name, steps, solver in rows]
    return [peer for peer in peers if peer is not None]


def _sweep_grids(process: str, parameters: dict) -> list[dict]:
    """Every grid a class has on a process: timestep spacings and sigma flags (VP), the flow grid, EDM's two."""
    if process == "flow":
        return [{}]  # use_flow_sigmas comes with the schedule; diffusers' sigma flags would build VP sigmas
    if process == "edm":
        return [{"sigma_schedule": grid} for grid in EDM_GRIDS]
    grids = [_grid_words(parameters, grid) for grid in (*TIMESTEP_SPACINGS, *SIGMA_FLAGS.values())]
    return [grid for grid in grids if grid is not None]


def _sweep_options(kind: Kind, process: str, parameters: dict):
    """Every options dict of a class: orders 1-3, solver types (where they matter), ODE algorithms, grids, final sigmas."""
    orders = range(1, 4) if kind.max_order else (None,)
    finals = [scheduler_words({"final_sigma": f}) for f in FINALS] if FINAL_WORD in parameters else [{}]
    for order in orders:
        types = kind.solver_types if (order or 1) >= kind.typed_from else kind.solver_types[:1]
        for solver_type, algo in itertools.product(types or (None,), kind.algos or (None,)):
            solver = {"order": order, "solver_type": solver_type, "algo": algo, "lower_order_final": True}
            words = scheduler_words({k: v for k, v in solver.items() if v is not None})
            words = {k: v for k, v in words.items() if k in parameters}
            for grid, final in itertools.product(_sweep_grids(process, parameters), finals):
                yield {**words, **grid, **final}


def sweep_peers(cfg: SolverConfig, nfe: int) -> list[Peer]:
    """Every configuration of diffusers' DPMSolver multistep and singlestep, UniPC and DEIS schedulers
    (EDM: its DPMSolver multistep) at ``nfe`` model calls, for a benchmark: orders 1-3, every solver
    type (midpoint/heun, bh1/bh2, logrho), dpmsolver++ and dpmsolver (ODE only), every grid a class
    has (timestep spacings linspace/leading/trailing and its sigma flags: karras, exponential, beta,
    logsnr; flow: its one flow grid; EDM: karras, exponential), both final sigmas where a class has
    the word, lower_order_final on. Dropped: what a class refuses when built (dpmsolver onto sigma 0,
    say), what it cannot read (flow_prediction in dpmsolver's noise form, v on a flow path) and UniPC
    bh1 onto sigma 0 (NaN, see :func:`nan_end`)."""
    _check_nfe(nfe)
    _diffusers()
    peers = []
    for name in SWEPT[cfg.process]:
        kind, parameters = KINDS[name], _parameters(name)
        if not _follows(kind, cfg, parameters):
            continue
        for options in _sweep_options(kind, cfg.process, parameters):
            peer = Peer(name, options, nfe)
            if nan_end(peer):
                continue  # known: NaN samples (see nan_end)
            try:
                build_scheduler(peer, cfg)
            except (ValueError, NotImplementedError):  # ConfigError is a ValueError: refused here too
                continue
            peers.append(peer)
    return peers


__all__ = ["KINDS", "Kind", "Peer", "PeerRun", "build_scheduler", "compare_peers", "grid_sigmas", "nan_end", "run_peer", "sweep_peers"]
