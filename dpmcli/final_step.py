"""``--final-decay P``: the step onto sigma 0, taken with a noise prediction that decays as sigma^P.

The last step of a run that ends at sigma 0 cannot be a polynomial in lambda (lambda is infinite
there), so every DPM-Solver takes it at first order: in sigma space (x~ = x / alpha) it holds the
noise prediction eps^ constant over [0, sigma_s] and lands on the data prediction, x~_0 = x~_s -
sigma_s eps^_s. Where the data has a smooth density, eps^ does not stay constant but vanishes as
sigma -> 0 (D(sigma) = x0 + O(sigma^2) along the ODE); holding eps^ = eps^_s (sigma / sigma_s)^P
over the interval instead gives x~_0 = x~_s - sigma_s eps^_s / (P + 1): P = 0 is the usual step,
P = 1 the smooth-density limit. No extra model call. ``dpmcli tune`` searches P with the grid.
Derivation: docs/mathematics.md §14.
"""

from __future__ import annotations

import math

from .errors import ConfigError


def kept_latent(decay: float) -> float:
    """The weight of x~_s in x~_0 = w x~_s + (1 - w) D_s, the decayed step's form: w = P / (P + 1)."""
    return decay / (decay + 1.0)


def check_final_decay(cfg) -> None:
    """--final-decay: a finite P >= 0; P > 0 only where the run ends at sigma 0 along the ODE in dpmcli's own arithmetic."""
    decay = cfg.final_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) or decay < 0:
        raise ConfigError(f"--final-decay: {decay!r} is not allowed; give a number P >= 0 (0: the usual last step, 1: smooth data)")
    if decay == 0:
        return
    ends_at_zero = cfg.sigmas[-1] == 0 if cfg.sigmas is not None else cfg.final_sigma == "zero"
    if not ends_at_zero:
        raise ConfigError(f"--final-decay: {decay:g} shapes the step onto sigma 0; this run ends at --final-sigma {cfg.final_sigma} "
                          "(use --final-sigma zero or drop --final-decay)")
    if cfg.is_sde or cfg.ancestral:
        raise ConfigError(f"--final-decay: {decay:g} models the probability-flow ODE's last interval; got --algo {cfg.algo}"
                          + (f" --method {cfg.method}" if cfg.ancestral and not cfg.is_sde else "") + " (use an ODE method)")
    if cfg.method == "adaptive":
        raise ConfigError(f"--final-decay: {decay:g} shapes a planned last step; --method adaptive chooses its steps at run time")
    if cfg.compat != "none":
        raise ConfigError(f"--final-decay: {cfg.compat} has no such last step; drop --final-decay or --compat {cfg.compat}")
