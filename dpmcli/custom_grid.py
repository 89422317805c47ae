"""Custom step grids: the checks on a grid given as sigmas (``--sigmas``) or as training timesteps (API)."""

from __future__ import annotations

import math

from .errors import ConfigError


def check_custom_sigmas(sigmas) -> None:
    values = list(sigmas)
    if len(values) < 2:
        raise ConfigError("--sigmas: give at least two values: the grid from the first sigma down to the final one")
    if not all(math.isfinite(s) for s in values):
        raise ConfigError("--sigmas: every value must be a finite number")
    if any(s <= 0 for s in values[:-1]) or values[-1] < 0:
        raise ConfigError("--sigmas: values must be positive (only the last one may be 0)")
    for i in range(len(values) - 1):
        if values[i + 1] > values[i]:
            raise ConfigError(
                f"--sigmas: the grid must decrease, but value {i + 1} ({values[i + 1]}) "
                f"is larger than value {i} ({values[i]})"
            )


def custom_timesteps(cfg) -> tuple[float, ...]:
    """A custom grid given as training timesteps: finite, within the table, non-increasing.

    In compat mode they are truncated to integers, as diffusers stores them (int64).
    """
    values = list(cfg.timesteps)
    if not values:
        raise ConfigError("timesteps: give at least one timestep")
    if not all(isinstance(t, (int, float)) and math.isfinite(t) for t in values):
        raise ConfigError("timesteps: every value must be a finite number")
    if cfg.compat == "diffusers":
        values = [float(int(t)) for t in values]
    top = cfg.train_steps - 1
    for i, t in enumerate(values):
        if not 0 <= t <= top:
            raise ConfigError(f"timesteps: value {i} ({t:g}) lies outside the training timesteps 0..{top}")
        if i and t > values[i - 1]:
            raise ConfigError(
                f"timesteps: the grid must decrease, but value {i} ({t:g}) is larger than value {i - 1} ({values[i - 1]:g})"
            )
    return tuple(float(t) for t in values)
