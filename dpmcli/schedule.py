"""Discrete VP noise schedules: betas -> alpha_bar -> (alpha_t, sigma_t, lambda) and back.

A schedule is a table of ``alphas_cumprod`` over the training timesteps 0..N-1. Between
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


@dataclass(frozen=True, eq=False)
class Schedule:
    """alpha_bar over the integer training timesteps, float64 (values may be float32-rounded in compat mode)."""

    alphas_cumprod: np.ndarray
    notes: tuple[str, ...] = ()  # oddities kept as diffusers keeps them (compat mode); the grid reports them

    @classmethod
    def from_config(cls, cfg: SolverConfig) -> "Schedule":
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
