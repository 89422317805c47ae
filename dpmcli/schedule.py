"""Noise processes: what alpha_t, sigma_t and the network's timestep are at each lambda, and back.

Every process is a Gaussian path x = alpha_t x0 + sigma_t eps; the solver works in lambda =
log(alpha_t / sigma_t), so a process only has to say what alpha_t and sigma_t are at a lambda,
which "sigma" its grid column shows (diffusers' word for it), what the network is told (its
timestep, and for EDM a scaled input) and how its raw output becomes x0 or eps. Three of them:
:class:`VPSchedule` (discrete VP from betas), :class:`FlowSchedule` (rectified flow) and
:class:`EDMSchedule` (sigma space); :meth:`Schedule.from_config` picks the one a config names.

The VP schedule is a table of ``alphas_cumprod`` over the training timesteps 0..N-1. Between
integer timesteps it is continued by linear interpolation of lambda (the half-log-SNR),
which is what diffusers' sigma->timestep conversion does (lambda = -log sigma): the map
timestep <-> lambda is then monotone and exactly invertible, so a model evaluated at a
fractional timestep sees exactly the noise level the solver assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from .coefficients import conversion
from .config import SolverConfig
from .errors import ConfigError


def make_betas(cfg: SolverConfig, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The beta table of ``cfg`` (float64 by default; float32 reproduces diffusers' arithmetic)."""
    n = cfg.train_steps
    if cfg.trained_betas is not None:
        return torch.tensor(cfg.trained_betas, dtype=dtype)
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=dtype)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=dtype) ** 2
    if cfg.beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal's cosine alpha_bar, betas capped at 0.999; computed in Python floats.
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=dtype)
    raise ConfigError(f"--beta-schedule: unknown schedule {cfg.beta_schedule!r}")


def rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that its last value is 0 and its first is unchanged."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


# diffusers' stand-in for alpha_bar = 0 at the last timestep of a zero-terminal-SNR schedule
# (the smallest positive float16 subnormal), so that the first sigma is finite.
ZERO_SNR_FLOOR = 2.0**-24


def zero_snr_floor(alphas_cumprod: np.ndarray) -> float:
    """dpmcli's float64 stand-in for alpha_bar_{N-1} = 0 after the zero-terminal-SNR rescale.

    diffusers' 2**-24 where it lies below alpha_bar_{N-2} (the usual case); otherwise, since lambda
    must keep decreasing, the last step in lambda repeats the one before it: lambda_{N-1} =
    2 lambda_{N-2} - lambda_{N-3} (docs/mathematics.md).
    """
    before = float(alphas_cumprod[-2])
    if ZERO_SNR_FLOOR < before or not before > 0.0:
        return ZERO_SNR_FLOOR  # (a table with alpha_bar_{N-2} = 0 is refused by the caller)
    lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in (float(v) for v in alphas_cumprod[-3:-1])]
    step = lam[0] - lam[-1] if len(lam) == 2 and lam[0] > lam[-1] else math.log(2.0)
    snr = math.exp(2.0 * (lam[-1] - step))
    return snr / (1.0 + snr)


def _alpha_bar(cfg: SolverConfig, dtype: torch.dtype) -> tuple[torch.Tensor, list[str]]:
    """alpha_bar over the training timesteps in ``dtype``, with the zero-SNR floor; notes on oddities."""
    betas = make_betas(cfg, dtype)
    if cfg.rescale_zero_snr:
        betas = rescale_to_zero_terminal_snr(betas)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    notes: list[str] = []
    if cfg.rescale_zero_snr:
        if dtype == torch.float32:  # compat: diffusers' floor whatever the value before it
            alphas_cumprod[-1] = ZERO_SNR_FLOOR
            before = float(alphas_cumprod[-2])
            if before <= ZERO_SNR_FLOOR:
                notes.append(
                    f"--rescale-zero-snr: alpha_bar at the last training timestep is diffusers' floor 2**-24, above "
                    f"alpha_bar {before:.3g} at the one before: the schedule rises there, as in diffusers"
                )
        else:
            alphas_cumprod[-1] = zero_snr_floor(alphas_cumprod.numpy())
    return alphas_cumprod, notes


def _problem(abar: np.ndarray, compat: bool, rescaled: bool) -> tuple[str, int] | None:
    """The first place where alpha_bar is not a usable schedule: ("nonfinite" | "no-decrease" | "underflow", timestep)."""
    tiny = float(np.finfo(np.float32 if compat else np.float64).tiny)
    bad = np.nonzero(~np.isfinite(abar))[0]
    if len(bad):
        return "nonfinite", int(bad[0])
    # compat keeps diffusers' floor even where it rises (the last entry)
    body = abar[:-1] if compat and rescaled else abar
    stall = np.nonzero(np.r_[body[:1] >= 1.0, body[1:] >= body[:-1]])[0]
    low = np.nonzero(abar < tiny)[0]
    found = ([("no-decrease", int(stall[0]))] if len(stall) else []) + ([("underflow", int(low[0]))] if len(low) else [])
    return min(found, key=lambda p: p[1]) if found else None


def _schedule_error(cfg: SolverConfig, abar: np.ndarray, kind: str, k: int, dtype: torch.dtype) -> ConfigError:
    """The one-line error for an unusable alpha_bar table, naming the option that made it so."""
    compat = dtype == torch.float32
    name = "float32" if compat else "float64"
    precision = "float32, as diffusers computes it" if compat else name
    info = np.finfo(np.float32 if compat else np.float64)
    eps, tiny = float(info.eps), float(info.tiny)
    n = len(abar)
    if kind == "nonfinite":
        return ConfigError(f"--beta-schedule: the betas give a non-finite alpha_bar at timestep {k}; check the schedule options")
    if kind == "no-decrease":
        why = (
            f"alpha_bar stops decreasing at timestep {k} (1 - beta rounds to 1 in {precision}); "
            f"every beta must be at least {eps:.3g}"
        )
        if cfg.trained_betas is not None:
            return ConfigError(f"--trained-betas: beta {k} ({cfg.trained_betas[k]!r}) is too small: {why}")
        if cfg.beta_schedule in ("linear", "scaled_linear"):
            return ConfigError(f"--beta-start: {cfg.beta_start!r} is too small: {why}")
        return ConfigError(f"--train-steps: {cfg.train_steps} is too many for --beta-schedule {cfg.beta_schedule}: {why}")
    why = (
        f"alpha_bar (the running product of 1 - beta) falls below {tiny:.3g}, {name}'s smallest "
        f"normal number, at timestep {k} of {n}: no signal is left"
    )
    if cfg.trained_betas is not None:
        return ConfigError(f"--trained-betas: {why}; use smaller betas (the sum of log(1 - beta) must stay above {math.log(tiny):.0f})")
    if cfg.beta_schedule not in ("linear", "scaled_linear"):
        return ConfigError(f"--train-steps: {cfg.train_steps} is too many for --beta-schedule {cfg.beta_schedule}: {why}")
    usable = lambda end: _problem(_alpha_bar(replace(cfg, beta_end=end), dtype)[0].double().numpy(), compat, cfg.rescale_zero_snr) is None  # noqa: E731
    context = f"--beta-schedule {cfg.beta_schedule} and --train-steps {cfg.train_steps}"
    if not usable(cfg.beta_start):
        # even constant betas of beta_start leave nothing: (1 - beta)^N < tiny
        bound = -math.expm1(math.log(tiny) / n)
        return ConfigError(
            f"--beta-start: {cfg.beta_start!r} is too large with {context}: {why}; beta-start must be below {_round_down(bound)} here, "
            "or use fewer --train-steps"
        )
    lo, hi = cfg.beta_start, cfg.beta_end
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if usable(mid) else (lo, mid)
    return ConfigError(
        f"--beta-end: {cfg.beta_end!r} is too large with --beta-start {cfg.beta_start!r}, {context}: {why}; "
        f"beta-end must be at most {_round_down(lo)} here, or use fewer --train-steps"
    )


def _round_down(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits, never above it (a bound that is quoted must hold)."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.floor(value * scale) / scale


class Schedule:
    """A noise process: what every schedule answers (the VP defaults; flow and EDM override them)."""

    process = "vp"
    notes: tuple[str, ...] = ()  # oddities kept as diffusers keeps them (compat mode); the grid reports them
    init_noise_sigma = 1.0  # x_T's standard deviation, as diffusers' pipelines draw it

    @staticmethod
    def from_config(cfg: SolverConfig) -> "Schedule":
        """The noise process ``cfg.process`` names, with its parameters."""
        if cfg.process == "flow":
            return FlowSchedule(cfg.train_steps, cfg.shift)
        if cfg.process == "edm":
            return EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.sigma_data)
        return VPSchedule.from_config(cfg)

    @property
    def lambda_limits(self) -> tuple[float, float]:
        """The finite lambda range of the schedule (noisiest, cleanest)."""
        finite = self.lambdas[np.isfinite(self.lambdas)]
        return float(finite.min()), float(finite.max())

    @property
    def trained_limits(self) -> tuple[float, float]:
        """The lambda range the network was trained on (a custom grid must stay inside it)."""
        return self.lambda_limits

    def alpha_sigma(self, lam: float) -> tuple[float, float]:
        return alpha_sigma(lam)

    def coefficients(self, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(alpha_t, sigma_t, lambda) of the grid's sigma column (diffusers' sigma)."""
        return vp_coefficients(sigma)

    def sigma_of(self, lam):
        """The grid's sigma column at lambda: diffusers' sigma = exp(-lambda)."""
        return np.exp(-np.asarray(lam, dtype=np.float64)) if np.ndim(lam) else math.exp(-lam)

    def noise_level(self, timestep: float) -> tuple[float, float]:
        """(alpha_t, sigma_t) a network told ``timestep`` assumes."""
        return self.alpha_sigma(float(self.lambda_at(float(timestep))))

    def noise_levels(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`noise_level` of a tensor of timesteps, as float64 tensors (what training noises with)."""
        lam = torch.from_numpy(self.lambda_at(timesteps.double().numpy()))
        # alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda): alpha_sigma, vectorised
        return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()

    def training_timesteps(self, uniform: torch.Tensor) -> torch.Tensor:
        """The fractional timesteps a network is trained at, from ``uniform`` draws in [0, 1): here [0, N-1]."""
        return uniform * (self.train_steps - 1)

    def input_scale(self, sigma_t: float) -> float:
        """What the network's input is multiplied by (EDM's c_in; 1 elsewhere)."""
        return 1.0

    def conversion(self, data: bool, prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
        """(p, q) with (x0 if data else eps) = p * x + q * model_output."""
        return conversion(data, prediction_type, alpha, sigma)

    def ode_scales(self, lam: float) -> tuple[float, float, float]:
        """(alpha, sigma, c) with the probability-flow ODE dx/dlambda = alpha (x0 - c x) (docs/mathematics.md)."""
        alpha, sigma = alpha_sigma(lam)
        return alpha, sigma, alpha


@dataclass(frozen=True, eq=False)
class VPSchedule(Schedule):
    """alpha_bar over the integer training timesteps, float64 (values may be float32-rounded in compat mode)."""

    alphas_cumprod: np.ndarray
    notes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: SolverConfig) -> "VPSchedule":
        # compat mode repeats diffusers' float32 betas and cumulative product.
        dtype = torch.float32 if cfg.compat == "diffusers" else torch.float64
        alphas_cumprod, notes = _alpha_bar(cfg, dtype)
        abar = alphas_cumprod.double().numpy().copy()
        problem = _problem(abar, dtype == torch.float32, cfg.rescale_zero_snr)
        if problem is not None:
            raise _schedule_error(cfg, abar, *problem, dtype)
        abar.setflags(write=False)
        return cls(abar, tuple(notes))

    @property
    def train_steps(self) -> int:
        return len(self.alphas_cumprod)

    # The tables below are computed once, on first use (every model call of a mixture reads them),
    # and are read-only: a schedule never changes.

    @cached_property
    def lambdas(self) -> np.ndarray:
        """lambda = log(alpha_t / sigma_t) at the integer timesteps (decreasing)."""
        abar = self.alphas_cumprod
        return _read_only(0.5 * (np.log(abar) - np.log1p(-abar)))

    @cached_property
    def sigmas(self) -> np.ndarray:
        """diffusers' sigma = sqrt((1 - alpha_bar) / alpha_bar) = exp(-lambda) at the integer timesteps."""
        return _read_only(np.exp(-self.lambdas))

    @cached_property
    def _timesteps(self) -> np.ndarray:
        """The integer training timesteps 0..N-1 as float64."""
        return _read_only(np.arange(self.train_steps, dtype=np.float64))

    def lambda_at(self, timestep) -> np.ndarray:
        """lambda at (possibly fractional) timesteps in [0, N-1], linear between integers."""
        t = np.asarray(timestep, dtype=np.float64)
        return np.interp(t, self._timesteps, self.lambdas)

    def timestep_at(self, lambda_) -> np.ndarray:
        """Inverse of :meth:`lambda_at` (lambda outside the table is clamped to its ends)."""
        lam = np.asarray(lambda_, dtype=np.float64)
        return np.interp(lam, self.lambdas[::-1], self._timesteps[::-1])


def _sigmoid_pair(lam: float) -> tuple[float, float]:
    """(1 / (1 + e^-lam), 1 / (1 + e^lam)) without overflow: flow's (alpha_t, sigma_t) at lambda."""
    if lam > 0:
        e = math.exp(-lam)
        return 1.0 / (1.0 + e), e / (1.0 + e)
    e = math.exp(lam)
    return e / (1.0 + e), 1.0 / (1.0 + e)


@dataclass(frozen=True, eq=False)
class FlowSchedule(Schedule):
    """Rectified flow: x = (1 - s) x0 + s eps, s in [0, 1]; the network sees timestep T s.

    alpha_t = 1 - s, sigma_t = s, lambda = log((1 - s) / s); the grid's sigma column is s
    (diffusers' flow sigmas). A shift S moves s to S s / (1 + (S - 1) s), which is lambda ->
    lambda - ln S: the schedule (what a timestep means) is unchanged, the grid is translated.
    """

    train_steps: int = 1000
    shift: float = 1.0

    process = "flow"

    @property
    def lambda_limits(self) -> tuple[float, float]:
        """Unshifted, s runs from 1 - 1/T down to 1/T (timesteps T - 1 to 1); the shift translates both ends."""
        edge = math.log(self.train_steps - 1)
        move = math.log(self.shift)
        return -edge - move, edge - move

    @property
    def trained_limits(self) -> tuple[float, float]:
        """Timesteps 1 to T - 1 unshifted, widened to where the shifted grids reach (as diffusers' do)."""
        edge = math.log(self.train_steps - 1)
        noisy, clean = self.lambda_limits
        return min(-edge, noisy), max(edge, clean)

    @cached_property
    def lambdas(self) -> np.ndarray:
        """lambda at the integer timesteps 1..T-1 (t = 0 is the data itself, lambda = +inf)."""
        t = np.arange(1, self.train_steps, dtype=np.float64)[::-1]
        return _read_only(np.log(self.train_steps - t) - np.log(t))

    @cached_property
    def sigmas(self) -> np.ndarray:
        return _read_only(self.sigma_of(self.lambdas))

    def lambda_at(self, timestep) -> np.ndarray:
        t = np.asarray(timestep, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.log(self.train_steps - t) - np.log(t)

    def timestep_at(self, lambda_) -> np.ndarray:
        return self.train_steps * self.sigma_of(lambda_)

    def alpha_sigma(self, lam: float) -> tuple[float, float]:
        return _sigmoid_pair(lam)

    def coefficients(self, sigma):
        s = np.asarray(sigma, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return 1.0 - s, s, np.log1p(-s) - np.log(s)

    def sigma_of(self, lam):
        """s at lambda: 1 / (1 + e^lambda), computed without overflow."""
        if np.ndim(lam):
            return 0.5 * (1.0 - np.tanh(0.5 * np.asarray(lam, dtype=np.float64)))
        return _sigmoid_pair(lam)[1]

    def noise_level(self, timestep: float) -> tuple[float, float]:
        s = float(timestep) / self.train_steps
        return 1.0 - s, s

    def noise_levels(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = timesteps.double() / self.train_steps
        return 1.0 - s, s

    def training_timesteps(self, uniform: torch.Tensor) -> torch.Tensor:
        """T s with s = 1 - uniform in (0, 1]: rectified flow's uniform s, pure noise included."""
        return (1.0 - uniform) * self.train_steps

    def conversion(self, data: bool, prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
        p, q = conversion(data, prediction_type, alpha, sigma)
        if prediction_type == "v_prediction":
            # v = alpha eps - sigma x0 recovers (alpha^2 + sigma^2) x0, which is 1 on VP paths only
            norm = alpha * alpha + sigma * sigma
            return p / norm, q / norm
        return p, q

    def ode_scales(self, lam: float) -> tuple[float, float, float]:
        alpha, sigma = _sigmoid_pair(lam)
        return alpha, sigma, 1.0


@dataclass(frozen=True, eq=False)
class EDMSchedule(Schedule):
    """EDM sigma space (Karras et al.): x = x0 + sigma eps, alpha_t = 1, sigma_t = sigma = e^-lambda.

    The network sees c_in x with c_in = 1 / sqrt(sigma^2 + sigma_data^2) and c_noise = ln(sigma) / 4
    (its timestep); its output F gives x0 = c_skip x + c_out F with c_skip = sigma_data^2 /
    (sigma^2 + sigma_data^2) and c_out = +-sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    (+ for diffusers' "epsilon", - for "v_prediction").
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5

    process = "edm"
    train_steps = 0  # (no training timesteps: the network is told c_noise)

    @property
    def init_noise_sigma(self) -> float:
        return math.sqrt(self.sigma_max**2 + 1.0)

    @property
    def lambda_limits(self) -> tuple[float, float]:
        return -math.log(self.sigma_max), -math.log(self.sigma_min)

    @cached_property
    def lambdas(self) -> np.ndarray:
        return _read_only(np.array(self.lambda_limits))

    @cached_property
    def sigmas(self) -> np.ndarray:
        return _read_only(np.array([self.sigma_max, self.sigma_min]))

    def lambda_at(self, timestep) -> np.ndarray:
        return -4.0 * np.asarray(timestep, dtype=np.float64)

    def timestep_at(self, lambda_) -> np.ndarray:
        return -0.25 * np.asarray(lambda_, dtype=np.float64)

    def alpha_sigma(self, lam: float) -> tuple[float, float]:
        return 1.0, math.exp(-lam)

    def coefficients(self, sigma):
        s = np.asarray(sigma, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.ones_like(s), s, -np.log(s)

    def noise_level(self, timestep: float) -> tuple[float, float]:
        return 1.0, math.exp(4.0 * float(timestep))

    def noise_levels(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.exp(4.0 * timesteps.double())
        return torch.ones_like(sigma), sigma

    def input_scale(self, sigma_t: float) -> float:
        return 1.0 / math.sqrt(sigma_t * sigma_t + self.sigma_data**2)

    def preconditioning(self, prediction_type: str, sigma: float) -> tuple[float, float]:
        """(c_skip, c_out): x0 = c_skip x + c_out F."""
        data2 = self.sigma_data**2
        c_skip = data2 / (sigma * sigma + data2)
        c_out = sigma * self.sigma_data / math.sqrt(sigma * sigma + data2)
        return c_skip, (-c_out if prediction_type == "v_prediction" else c_out)

    def conversion(self, data: bool, prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
        c_skip, c_out = self.preconditioning(prediction_type, sigma)
        if data:
            return c_skip, c_out
        if sigma == 0.0:
            return 0.0, 0.0  # (the step to sigma 0 reads no noise prediction)
        return (1.0 - c_skip) / sigma, -c_out / sigma  # eps = (x - x0) / sigma

    def ode_scales(self, lam: float) -> tuple[float, float, float]:
        return 1.0, math.exp(-lam), 1.0


def _read_only(values: np.ndarray) -> np.ndarray:
    values.setflags(write=False)
    return values


def alpha_sigma(lam: float) -> tuple[float, float]:
    """(alpha_t, sigma_t) at half-log-SNR lambda, accurate for every lambda (+inf gives (1, 0))."""
    if lam > 0:
        e = math.exp(-lam)
        alpha = 1.0 / math.sqrt(1.0 + e * e)
        return alpha, e * alpha
    e = math.exp(lam)
    sigma = 1.0 / math.sqrt(1.0 + e * e)
    return e * sigma, sigma


def vp_coefficients(sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha_t, sigma_t, lambda) of diffusers' sigma; sigma = 0 gives (1, 0, +inf) without a warning."""
    s = np.asarray(sigma, dtype=np.float64)
    alpha_t = 1.0 / np.sqrt(1.0 + s * s)
    sigma_t = s * alpha_t
    with np.errstate(divide="ignore"):
        lam = -np.log(s)
    return alpha_t, sigma_t, lam
