"""The solver configuration: every option that shapes the plan, with its validation.

Field names follow the command-line flags (``--beta-schedule`` -> ``beta_schedule``) and,
where diffusers has a word for the same thing, diffusers' vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .corrector import check_corrector
from .final_step import check_final_decay
from .custom_grid import check_custom_sigmas, custom_timesteps
from .errors import ConfigError, bad_choice
from .kdiffusion import check_kdiffusion_compat
from .processes import PROCESSES, check_diffusers_process, check_process, foreign_options

ALGOS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
METHODS = ("multistep", "singlestep", "adaptive", "ancestral")
STARTUPS = ("lower-order", "singlestep")
MAX_ORDER = 8  # multistep; beyond 6 the explicit multistep methods lose stability fast
PUBLISHED_MAX_ORDER = 3  # the papers' (and diffusers') weights stop at order 3
SINGLESTEP_ORDERS = (1, 2, 3)  # DPM-Solver-1, -2, -3
ADAPTIVE_ORDERS = (2, 3)  # the embedded pairs DPM-Solver-12 and -23
ANCESTRAL_ORDERS = (1, 2)  # DPM-Solver++(1) (Euler) ancestral and DPM-Solver++(2S) ancestral
ANCESTRAL_MAX_ETA = 100.0  # their SDE is at eta^2 (SolverConfig.sde_config): keeps it a float
SOLVER_TYPES = ("midpoint", "heun")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
COEFFICIENTS = ("published", "exact")
COMPAT = ("none", "diffusers", "k-diffusion")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = (
    "linspace",
    "leading",
    "trailing",
    "time-uniform",
    "logsnr",
    "time-quadratic",
    "karras",
    "exponential",
    "beta",
    "custom",
)
# Spacings that diffusers' DPMSolverMultistepScheduler can produce (logsnr is its use_lu_lambdas).
DIFFUSERS_SPACINGS = ("linspace", "leading", "trailing", "karras", "exponential", "beta", "logsnr")
FINAL_SIGMAS = ("zero", "sigma-min")
SINGLESTEP_DIFFUSERS_SPACINGS = ("linspace", "karras", "exponential", "beta")
# diffusers refuses custom timesteps together with one of its sigma grids
DIFFUSERS_SIGMA_SPACINGS = ("karras", "exponential", "beta", "logsnr")
# 100x the usual 1000: the tables stay small (a few MB) and every schedule is built in well
# under a second; beyond it a beta table of floats only grows, it does not get more accurate.
MAX_TRAIN_STEPS = 100_000
# The Karras grid's exponent: 7 in Karras et al.; rho -> infinity tends to the exponential grid,
# rho -> 0 piles every step onto sigma_max. Outside this range the grid says nothing new.
RHO_RANGE = (1e-3, 1e3)


# The help panels of the command line (long option names get panels of their own, so that at
# 80 columns the help keeps room for its words and no name is cut short).
SOLVER = "Solver"
FINAL_STEPS = "Solver: the last steps"
THRESHOLD = "Solver: dynamic thresholding"
SDE_NOISE = "Solver: SDE noise"
GRID = "Schedule and grid"
PROCESS = "Noise process"


def _option(default, help: str, panel: str = SOLVER):
    """A field that is also a command-line option: ``--name-with-dashes``, its help text and panel."""
    return field(default=default, metadata={"help": help, "panel": panel})


def _choices(values) -> str:
    return ", ".join(values)


@dataclass(frozen=True)
class SolverConfig:
    """Everything the plan depends on. Build one, call :meth:`validated`, then ``build_plan``.

    Each field's ``metadata`` holds its command-line help text and panel (see ``option_flag``).
    """

    algo: str = _option(
        "dpmsolver++",
        f"Algorithm: {_choices(ALGOS)}. The ++ forms integrate the data (x0) prediction, the others the noise; "
        "sde- forms add fresh noise each step.",
    )
    order: int = _option(
        2,
        "Order: multistep 1-8 (orders above 3 always use exact weights), singlestep 1-3, adaptive 2-3. "
        "Order 3 with published weights converges at order 2 (see --coefficients).",
    )
    steps: int = _option(20, "Number of grid steps (multistep with the classic start-up: also the number of model calls).")
    method: str = _option(
        "multistep",
        "multistep (reuse earlier model outputs), singlestep (DPM-Solver-1/2/3: extra evaluations inside each step; "
        "with sde-dpmsolver++ order 2 it is DPM-Solver++ SDE), adaptive (DPM-Solver-12/23 with a step-size controller; "
        "ODE algorithms) or ancestral (DPM-Solver++(1)/(2S) ancestral: a deterministic step, then fresh noise).",
    )
    startup: str = _option(
        "lower-order",
        "How an order-K multistep run starts: lower-order (orders 1, 2, ... first; caps the asymptotic order at 2) "
        "or singlestep (extra evaluations so that the start keeps order K; ODE algorithms).",
    )
    # singlestep: pick steps and orders for this budget (DPM-Solver-fast)
    nfe: int | None = _option(None, "singlestep: spend exactly this many model calls (DPM-Solver-fast picks steps and orders).")
    # adaptive: absolute tolerance (the DPM-Solver paper's default for data in [-1, 1])
    atol: float = _option(0.0078, "adaptive: absolute error tolerance per step.")
    rtol: float = _option(0.05, "adaptive: relative error tolerance per step.")  # adaptive: relative tolerance
    solver_type: str = _option("midpoint", f"Second-order form: {_choices(SOLVER_TYPES)} (heun is exact for linear predictions).")
    coefficients: str = _option(
        "published",
        f"{_choices(COEFFICIENTS)}: 'published' are the weights of the papers, diffusers and k-diffusion; "
        "'exact' integrates the interpolating polynomial exactly (order k converges at order k).",
    )
    compat: str = _option(
        "none",
        "none; diffusers: reproduce DPMSolverMultistepScheduler's arithmetic step for step; k-diffusion: k-diffusion's "
        "samplers as ComfyUI and A1111 run them (dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_2s_ancestral, dpmpp_sde).",
    )
    corrector: str = _option(
        "none",
        "none, or unic: UniPC's corrector after every multistep step but the last, from the model output the next step "
        "computes anyway (no extra model calls; one order higher). Weights: --coefficients exact, or published in --unic-variant's form.",
    )
    unic_variant: str = _option("bh2", "unic's published weights: UniPC's B(h) = z (bh1) or e^z - 1 (bh2, diffusers' default), z = -h for ++.")
    lower_order_final: bool = _option(
        True, "Lower the order of the last two steps when there are fewer than 15 (on by default).", FINAL_STEPS
    )
    euler_at_final: bool = _option(False, "Take the last step with first order.", FINAL_STEPS)
    final_decay: float = _option(
        0.0, "The step onto sigma 0 holds the noise prediction as sigma^P over its interval: x0 = x - sigma eps / (P + 1) in "
        "sigma space. 0 is the usual last step (the data prediction); 1 holds where the data has a smooth density. "
        "dpmcli tune searches it.", FINAL_STEPS,
    )
    eta: float | None = _option(
        None,
        "SDE algorithms: how much reverse-SDE noise each step injects, eta >= 0: 0 is the ODE, 1 (the default) the "
        "full SDE; the weights follow eta (kernel exp(-(1 + eta) h) for sde-dpmsolver++). Ancestral steps "
        "(--method ancestral, singlestep sde-dpmsolver++): k-diffusion's ancestral eta, 0 the ODE, 1 the default.",
        SDE_NOISE,
    )
    s_noise: float = _option(1.0, "SDE algorithms: scale of the injected noise (k-diffusion's s_noise); 1 keeps the marginals.", SDE_NOISE)
    prediction_type: str = _option("epsilon", f"What the model predicts: {_choices(PREDICTION_TYPES)}.")
    thresholding: bool = _option(False, "Dynamic thresholding of the x0 prediction (Imagen).", THRESHOLD)
    dynamic_thresholding_ratio: float = _option(0.995, "Quantile of |x0| used by --thresholding.", THRESHOLD)
    sample_max_value: float = _option(1.0, "Largest threshold --thresholding may use.", THRESHOLD)
    process: str = _option(
        "vp",
        "The Gaussian path x = alpha x0 + sigma eps: vp (discrete betas, Stable Diffusion 1.x/2.x), "
        "flow (rectified flow, alpha = 1 - s, sigma = s: SD3, Flux, Sana) or edm (sigma space, alpha = 1).",
        PROCESS,
    )
    flow_shift: float = _option(1.0, "flow: static shift S of the grid, s' = S s / (1 + (S - 1) s) (SD3 3.0, Sana 3.0 or 6.0).", PROCESS)
    flow_mu: float | None = _option(None, "flow: dynamic shift as Flux computes it: S = exp(mu) (diffusers' use_dynamic_shifting).", PROCESS)
    sigma_min: float = _option(0.002, "edm: smallest sigma of the grid.", PROCESS)
    sigma_max: float = _option(80.0, "edm: largest sigma of the grid (x_T is drawn with std sqrt(sigma_max^2 + 1)).", PROCESS)
    sigma_data: float = _option(0.5, "edm: the data's standard deviation in the preconditioning.", PROCESS)
    beta_schedule: str = _option("scaled_linear", f"Training betas: {_choices(BETA_SCHEDULES)}.", GRID)
    beta_start: float = _option(0.00085, "First beta of linear / scaled_linear.", GRID)
    beta_end: float = _option(0.012, "Last beta of linear / scaled_linear.", GRID)
    train_steps: int = _option(1000, "Number of training timesteps.", GRID)
    trained_betas: tuple[float, ...] | None = field(
        default=None, repr=False, metadata={"help": "Betas from a .npy or text file (overrides --beta-schedule).", "panel": GRID}
    )
    rescale_zero_snr: bool = _option(False, "Rescale the betas to zero terminal SNR.", GRID)
    lambda_min_clipped: float = _option(
        -math.inf, "Drop the noisiest timesteps whose lambda is below this (cosine schedules).", GRID
    )
    spacing: str = _option("linspace", f"Step grid: {_choices(SPACINGS[:-1])} (custom: see --sigmas).", GRID)
    steps_offset: int = _option(0, "Offset added to 'leading' timesteps.", GRID)
    rho: float = _option(7.0, "Exponent of the karras grid.", GRID)
    sigmas: tuple[float, ...] | None = _option(
        None,
        "A custom grid: comma list '14.6,7.0,...,0' or a .npy/text file; N+1 decreasing values, the last the final sigma.",
        GRID,
    )
    # a custom grid given as training timesteps (the model's t); API only, the command line takes --sigmas
    timesteps: tuple[float, ...] | None = None
    final_sigma: str = _option("zero", f"Where the last step lands: {_choices(FINAL_SIGMAS)}.", GRID)

    @property
    def is_sde(self) -> bool:
        """Whether the run injects noise: an sde- algorithm, or ancestral steps."""
        return self.algo.startswith("sde-") or self.method == "ancestral"

    @property
    def ancestral(self) -> bool:
        """Noise from ancestral steps (a deterministic step below the target, then fresh noise up to it):
        --method ancestral, and singlestep sde-dpmsolver++ outside diffusers' compat (DPM-Solver++ SDE)."""
        return self.method == "ancestral" or (self.method == "singlestep" and self.is_sde and self.compat != "diffusers")

    @property
    def sde_eta(self) -> float:
        """The eta the weights use: --eta (1 when not given) for the SDE algorithms, 0 for the ODE ones."""
        if not self.is_sde:
            return 0.0
        return 1.0 if self.eta is None else float(self.eta)

    def sde_config(self) -> "SolverConfig":
        """The config of the SDE a stochastic run discretises: itself, or for ancestral steps at eta e the
        data-form SDE at eta e^2 (their noise variance and drift agree to first order in h; docs/mathematics.md)."""
        if not self.ancestral:
            return self
        return replace(self, algo="sde-dpmsolver++", method="multistep", eta=self.sde_eta**2, compat="none")

    @property
    def predicts_data(self) -> bool:
        """True for the ++ algorithms, which integrate the x0 prediction."""
        return self.algo.endswith("++")

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.trained_betas is not None:
            out["trained_betas"] = f"<{len(self.trained_betas)} values>"
        if self.sigmas is not None:
            out["sigmas"] = list(self.sigmas)
        if self.timesteps is None:
            del out["timesteps"]  # only API users give timesteps; keep the CLI's documents as they were
        else:
            out["timesteps"] = list(self.timesteps)
        for name in foreign_options(self.process):
            out.pop(name, None)  # another process's options say nothing about this run
        if self.final_decay == 0:
            del out["final_decay"]  # documents with the usual last step stay as they were
        if self.corrector == "none":
            del out["corrector"], out["unic_variant"]  # documents without a corrector stay as they were
        if not self.is_sde:
            del out["eta"], out["s_noise"]  # an ODE run injects no noise: keep its documents as they were
        else:
            out["eta"] = self.sde_eta
        return out

    @property
    def shift(self) -> float:
        """The flow grid's shift S: exp(--flow-mu) when it is given, else --flow-shift."""
        return math.exp(self.flow_mu) if self.flow_mu is not None else self.flow_shift

    def with_options(self, **changes) -> "SolverConfig":
        return replace(self, **changes)

    def validated(self) -> "SolverConfig":
        """Check every option; return the config with custom grids resolved, or raise ConfigError."""
        cfg = self
        _choice("--algo", cfg.algo, ALGOS)
        _choice("--solver-type", cfg.solver_type, SOLVER_TYPES)
        _choice("--coefficients", cfg.coefficients, COEFFICIENTS)
        _choice("--compat", cfg.compat, COMPAT)
        _choice("--prediction-type", cfg.prediction_type, PREDICTION_TYPES)
        _choice("--process", cfg.process, PROCESSES)
        check_process(cfg, _DEFAULTS)
        if cfg.sigmas is None:  # a custom grid sets its own final sigma
            _choice("--final-sigma", cfg.final_sigma, FINAL_SIGMAS)
        _choice("--spacing", cfg.spacing, SPACINGS)
        if cfg.trained_betas is None:
            _choice("--beta-schedule", cfg.beta_schedule, BETA_SCHEDULES)
        _choice("--method", cfg.method, METHODS)
        _choice("--startup", cfg.startup, STARTUPS)
        if not isinstance(cfg.order, int) or not 1 <= cfg.order <= MAX_ORDER:
            raise ConfigError(f"--order: {cfg.order!r} is not allowed; choose an integer from 1 to {MAX_ORDER}")
        if not isinstance(cfg.train_steps, int) or not 2 <= cfg.train_steps <= MAX_TRAIN_STEPS:
            raise ConfigError(
                f"--train-steps: {cfg.train_steps!r} is not allowed; choose an integer from 2 to {MAX_TRAIN_STEPS}"
            )
        if cfg.trained_betas is not None:
            cfg = _with_trained_betas(cfg)
        else:
            _check_beta_range(cfg)
        if cfg.sigmas is not None and cfg.timesteps is not None:
            raise ConfigError("--sigmas: give the custom grid as sigmas or as timesteps, not both")
        if cfg.sigmas is not None:
            cfg = replace(cfg, spacing="custom")
            check_custom_sigmas(cfg.sigmas)
            cfg = replace(cfg, steps=len(cfg.sigmas) - 1, final_sigma="zero" if cfg.sigmas[-1] == 0 else "custom")
        elif cfg.timesteps is not None:
            if cfg.compat == "diffusers" and cfg.spacing in DIFFUSERS_SIGMA_SPACINGS:
                raise ConfigError(
                    f"--compat diffusers: diffusers refuses custom timesteps with --spacing {cfg.spacing} "
                    "(its use_*_sigmas and use_lu_lambdas grids); drop one of them"
                )
            cfg = replace(cfg, spacing="custom", timesteps=custom_timesteps(cfg))
            cfg = replace(cfg, steps=len(cfg.timesteps))
        elif cfg.spacing == "custom":
            raise ConfigError("--spacing: 'custom' needs the grid itself: pass --sigmas 14.6,7.0,...,0 or a file")
        if not isinstance(cfg.steps, int) or not 1 <= cfg.steps <= cfg.train_steps:
            raise ConfigError(
                f"--steps: {cfg.steps!r} is not allowed; choose an integer from 1 to --train-steps ({cfg.train_steps})"
            )
        ratio = cfg.dynamic_thresholding_ratio
        if not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0):
            # 0 is allowed, as in diffusers: the quantile is then the smallest |x0|, clamped to at least 1
            raise ConfigError(f"--dynamic-thresholding-ratio: {ratio!r} is not allowed; it must lie in [0, 1]")
        if not (isinstance(cfg.sample_max_value, (int, float)) and cfg.sample_max_value > 0):
            # below 1 the threshold is sample_max_value itself (the clamp's upper end wins), as in diffusers
            raise ConfigError(f"--sample-max-value: {cfg.sample_max_value!r} is not allowed; it must be a positive number")
        lo, hi = RHO_RANGE
        if not (isinstance(cfg.rho, (int, float)) and lo <= cfg.rho <= hi):
            raise ConfigError(f"--rho: {cfg.rho!r} is not allowed; it must lie in [{lo:g}, {hi:g}] (Karras et al. use 7)")
        if not isinstance(cfg.steps_offset, int) or not 0 <= cfg.steps_offset < cfg.train_steps:
            raise ConfigError(
                f"--steps-offset: {cfg.steps_offset!r} is not allowed; choose an integer from 0 to {cfg.train_steps - 1}"
            )
        if not isinstance(cfg.lambda_min_clipped, (int, float)) or math.isnan(cfg.lambda_min_clipped):
            raise ConfigError(f"--lambda-min-clipped: {cfg.lambda_min_clipped!r} is not allowed; it must be a number (-inf: no clipping)")
        _check_method(cfg)
        _check_sde_noise(cfg)
        check_corrector(cfg)
        check_final_decay(cfg)
        if cfg.compat == "diffusers":
            _check_diffusers_compat(cfg)
        if cfg.compat == "k-diffusion":
            check_kdiffusion_compat(cfg)
            cfg = replace(cfg, lower_order_final=False)  # k-diffusion lowers only the step onto sigma 0
        return cfg


def option_fields() -> tuple:
    """The fields of SolverConfig that carry command-line help (``metadata["help"]``, ``["panel"]``)."""
    return tuple(f for f in fields(SolverConfig) if "help" in f.metadata)


def _check_method(cfg: SolverConfig) -> None:
    """Which method, order and start-up go together."""
    if cfg.method == "ancestral":
        _check_ancestral(cfg)
    if cfg.ancestral and cfg.eta is not None and sde_noise_ok("eta", cfg.eta) and cfg.eta > ANCESTRAL_MAX_ETA:
        raise ConfigError(f"--eta: {cfg.eta!r} is not allowed with ancestral steps; it must lie in [0, {ANCESTRAL_MAX_ETA:g}] "
                          "(a larger eta only makes more steps' ODE part reach sigma 0)")
    ode_only = {"adaptive": "--method adaptive"}.get(cfg.method)
    if cfg.method == "singlestep" and cfg.algo == "sde-dpmsolver" and cfg.compat != "diffusers":
        ode_only = "--method singlestep"  # its stochastic singlestep form is DPM-Solver++ SDE, a data-prediction method
    if cfg.method == "multistep" and cfg.startup == "singlestep" and cfg.order > 2:
        ode_only = "--startup singlestep"
    if ode_only and cfg.is_sde:
        raise ConfigError(f"{ode_only}: {cfg.algo!r} is not supported; use dpmsolver or dpmsolver++ (ODE algorithms)")
    if cfg.method == "singlestep" and cfg.ancestral and cfg.order != 2:
        raise ConfigError(
            f"--order: {cfg.order} is not allowed with --method singlestep --algo sde-dpmsolver++ (DPM-Solver++ SDE, "
            "second order); use --order 2, or --method ancestral --order 1 for a first-order stochastic step"
        )
    if cfg.method == "singlestep" and cfg.order not in SINGLESTEP_ORDERS:
        raise ConfigError(f"--order: {cfg.order} is not allowed with --method singlestep; choose 1, 2 or 3 (DPM-Solver-1/2/3)")
    if cfg.method == "adaptive" and cfg.order not in ADAPTIVE_ORDERS:
        raise ConfigError(f"--order: {cfg.order} is not allowed with --method adaptive; choose 2 (DPM-Solver-12) or 3 (DPM-Solver-23)")
    if cfg.nfe is not None:
        if cfg.method != "singlestep":
            raise ConfigError("--nfe: only --method singlestep picks steps and orders from an NFE budget; use --steps")
        if not isinstance(cfg.nfe, int) or cfg.nfe < 1:
            raise ConfigError(f"--nfe: {cfg.nfe!r} is not allowed; it must be a positive integer")
    if cfg.method == "adaptive":
        if cfg.thresholding:
            raise ConfigError("--thresholding: not available with --method adaptive; use multistep or singlestep")
        if cfg.sigmas is not None or cfg.timesteps is not None:
            raise ConfigError("--sigmas: --method adaptive chooses its own steps; drop the custom grid")
        for name in ("atol", "rtol"):
            value = getattr(cfg, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name}: {value!r} is not allowed; it must be a positive number")
    if cfg.method == "multistep" and cfg.order > PUBLISHED_MAX_ORDER and cfg.steps < cfg.order:
        raise ConfigError(
            f"--order: {cfg.order} is too high for --steps {cfg.steps}; an order-{cfg.order} multistep method needs at least {cfg.order} steps"
        )
    if cfg.method == "multistep" and cfg.startup == "singlestep" and cfg.steps < cfg.order:
        raise ConfigError(
            f"--startup singlestep: needs at least --order ({cfg.order}) steps to start on, got --steps {cfg.steps}"
        )


def _check_ancestral(cfg: SolverConfig) -> None:
    """--method ancestral: the data-prediction ODE step below the target, then noise up to it (k-diffusion's samplers)."""
    if cfg.algo != "dpmsolver++":
        why = "ancestral steps add their own noise" if cfg.algo.startswith("sde-") else "its steps integrate the data prediction"
        raise ConfigError(f"--method ancestral: {cfg.algo!r} is not supported ({why}); use --algo dpmsolver++")
    if cfg.order not in ANCESTRAL_ORDERS:
        raise ConfigError(f"--order: {cfg.order} is not allowed with --method ancestral; choose 1 (DPM-Solver++(1) ancestral, "
                          "Euler ancestral) or 2 (DPM-Solver++(2S) ancestral)")


# what --eta and --s-noise may be: the test and the words an error uses
SDE_NOISE_RANGES = {"eta": (lambda v: v >= 0.0, "a number >= 0"), "s_noise": (lambda v: v > 0.0, "a positive number")}


def sde_noise_ok(name: str, value) -> bool:
    """Whether ``value`` is allowed for ``name`` ("eta" or "s_noise")."""
    return isinstance(value, (int, float)) and math.isfinite(value) and SDE_NOISE_RANGES[name][0](value)


def _check_sde_noise(cfg: SolverConfig) -> None:
    """--eta and --s-noise: numbers in range, on an SDE algorithm, and not in diffusers' compat (which has neither)."""
    for name, (_, allowed) in SDE_NOISE_RANGES.items():
        value = getattr(cfg, name)
        if value is not None and not sde_noise_ok(name, value):
            raise ConfigError(f"--{name.replace('_', '-')}: {value!r} is not allowed; it must be {allowed}")
    given = [o for o, v, default in (("--eta", cfg.eta, None), ("--s-noise", cfg.s_noise, 1.0)) if v != default]
    if given and not cfg.is_sde:
        raise ConfigError(
            f"{given[0]}: applies to the SDE algorithms (sde-dpmsolver++, sde-dpmsolver) and --method ancestral, "
            f"not {cfg.algo!r}; drop it"
        )
    changed = [o for o, v, default in (("--eta", cfg.sde_eta, 1.0), ("--s-noise", cfg.s_noise, 1.0)) if v != default]
    if changed and cfg.is_sde and cfg.compat == "diffusers":
        raise ConfigError(f"{changed[0]}: diffusers' SDE schedulers inject the full noise (eta 1, s_noise 1); drop {changed[0]} or --compat diffusers")


def _choice(option: str, value, allowed) -> None:
    if value not in allowed:
        raise bad_choice(option, value, allowed)


def _with_trained_betas(cfg: SolverConfig) -> SolverConfig:
    """Check an explicit beta table; it sets the number of training timesteps (not in compat mode)."""
    betas = cfg.trained_betas
    if len(betas) < 2:
        raise ConfigError("--trained-betas: the file must hold at least 2 betas")
    if len(betas) > MAX_TRAIN_STEPS:
        raise ConfigError(f"--trained-betas: the file holds {len(betas)} betas; at most {MAX_TRAIN_STEPS} are allowed")
    bad = next((i for i, b in enumerate(betas) if not (isinstance(b, (int, float)) and 0.0 < b < 1.0)), None)
    if bad is not None:
        raise ConfigError(f"--trained-betas: beta {bad} is {betas[bad]!r}; every beta must lie strictly between 0 and 1")
    if cfg.compat == "diffusers":
        # diffusers keeps num_train_timesteps for its timestep grid whatever the table's length
        return replace(cfg, beta_schedule="trained")
    return replace(cfg, train_steps=len(betas), beta_schedule="trained")


def _check_beta_range(cfg: SolverConfig) -> None:
    start, end = cfg.beta_start, cfg.beta_end
    numbers = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (start, end))
    if not numbers or not 0.0 < start < 1.0:
        raise ConfigError(f"--beta-start: {start!r} is not allowed; it must lie strictly between 0 and 1")
    if not end < 1.0:
        raise ConfigError(f"--beta-end: {end!r} is not allowed; it must lie in [--beta-start ({start!r}), 1)")
    if not start <= end:
        raise ConfigError(f"--beta-start: {start!r} is not allowed; it must not exceed --beta-end ({end!r})")


def _check_diffusers_compat(cfg: SolverConfig) -> None:
    check_diffusers_process(cfg)
    if cfg.sigmas is not None:
        raise ConfigError(
            "--compat diffusers: diffusers' DPM-Solver schedulers take custom timesteps, not custom sigmas; drop --sigmas"
        )
    if cfg.spacing not in DIFFUSERS_SPACINGS and cfg.timesteps is None:
        raise ConfigError(
            f"--compat diffusers: --spacing {cfg.spacing!r} does not exist in diffusers; "
            f"choose one of: {', '.join(DIFFUSERS_SPACINGS)}"
        )
    if cfg.coefficients != "published":
        raise ConfigError("--compat diffusers: uses diffusers' own weights; drop --coefficients exact")
    if cfg.method in ("adaptive", "ancestral") or (cfg.method == "multistep" and cfg.startup != "lower-order"):
        raise ConfigError(
            "--compat diffusers: reproduces DPMSolverMultistepScheduler (--method multistep, --startup lower-order) "
            "and DPMSolverSinglestepScheduler (--method singlestep)"
        )
    if cfg.method == "singlestep":
        if cfg.spacing not in SINGLESTEP_DIFFUSERS_SPACINGS and cfg.timesteps is None:
            raise ConfigError(
                f"--compat diffusers: DPMSolverSinglestepScheduler has no --spacing {cfg.spacing!r}; "
                f"choose one of: {', '.join(SINGLESTEP_DIFFUSERS_SPACINGS)}"
            )
        if cfg.algo == "sde-dpmsolver":
            raise ConfigError("--compat diffusers: DPMSolverSinglestepScheduler has no sde-dpmsolver")
        if cfg.nfe is not None:
            raise ConfigError("--compat diffusers: diffusers' singlestep scheduler takes --steps, not --nfe")
    if cfg.order > PUBLISHED_MAX_ORDER:
        raise ConfigError(f"--compat diffusers: diffusers stops at order 3; got --order {cfg.order}")
    if not cfg.predicts_data and cfg.final_sigma == "zero":
        raise ConfigError(
            f"--compat diffusers: diffusers refuses --algo {cfg.algo} with --final-sigma zero; use --final-sigma sigma-min"
        )
    if cfg.algo == "sde-dpmsolver" and cfg.order == 3:
        raise ConfigError("--compat diffusers: diffusers has no third-order sde-dpmsolver; use --order 1 or 2")
    if cfg.rho != 7.0 and cfg.spacing == "karras" and cfg.process != "edm":
        raise ConfigError("--compat diffusers: diffusers fixes rho at 7 for karras sigmas; drop --rho")


_DEFAULTS = {f.name: f.default for f in fields(SolverConfig)}
