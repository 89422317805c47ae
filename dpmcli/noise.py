"""Where SDE noise comes from. Noise is drawn by the loop and handed to the update, never inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError


def derived_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for one stream (x_T, SDE noise, ...) of a user seed."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"--seed: {seed!r} is not allowed; it must be an integer >= 0")
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class GaussianNoise:
    """Seeded Gaussian noise, one draw per step, in step order: ``noise(step, like, scale)`` is scale * z.

    Draws happen on the CPU in float32 and are then moved, so the same seed gives the same
    noise on every device. The returned tensor is valid until the next draw: the update
    consumes it at once, and reusing its memory saves an allocation per step.
    """

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(derived_seed(seed, 1))
        self._buffer: torch.Tensor | None = None

    def __call__(self, step: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        buffer = self._buffer
        if buffer is None or buffer.shape != like.shape:
            buffer = self._buffer = torch.empty(like.shape, dtype=torch.float32)
        # normal_(0, scale) draws the same numbers as randn() * scale, in one pass.
        z = buffer.normal_(0.0, scale, generator=self.generator)
        return z if like.device.type == "cpu" and like.dtype == torch.float32 else z.to(like.device, like.dtype)


class ArrayNoise:
    """Noise supplied by the user: an array of shape (steps, batch, *dims), one slice per step."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array)

    @classmethod
    def load(cls, path: str | Path, steps: int, shape: tuple[int, ...]) -> "ArrayNoise":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--noise: cannot read {path} as a .npy array ({exc})") from None
        want = (steps, *shape)
        if array.shape != want:
            raise ConfigError(f"--noise: {path} has shape {array.shape}; this run needs {want} (steps x batch x dims)")
        check_real_finite("--noise", path, array)
        return cls(array)

    def __call__(self, step: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        z = torch.from_numpy(np.ascontiguousarray(self.array[step])).to(like.device, like.dtype)
        return z * scale


def check_real_finite(option: str, path, array: np.ndarray) -> None:
    """Input arrays hold real, finite numbers: a complex array would lose its imaginary part unseen."""
    real = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    if not real:
        raise ConfigError(f"{option}: {path} holds {array.dtype} values; it must hold real numbers (float or integer)")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{option}: {path} holds NaN or infinite values; it must hold finite numbers")


def initial_latents(seed: int, shape: tuple[int, ...], device, dtype, std: float = 1.0) -> torch.Tensor:
    """x_T ~ N(0, std^2 I), drawn in float64 on the CPU from the seed, then moved and cast.

    ``std`` is the schedule's ``init_noise_sigma`` (EDM: sqrt(sigma_max^2 + 1), as diffusers draws it).
    """
    generator = torch.Generator().manual_seed(derived_seed(seed, 0))
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    if std != 1.0:
        x = x * std
    return x.to(device=device, dtype=dtype)
