"""Where SDE noise comes from. Noise is drawn by the loop and handed to the update, never inside it."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError


# What a seed draws (x_T, Gaussian noise, Brownian normals), for anything that records or caches
# results by seed: 2 is per-sample draws (row_normals), 1 the whole-batch torch generators before it.
DRAW_VERSION = 2

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (odd: a full-period Weyl sequence)
_ROW_GAMMA = 0xD1B54A32D192ED03  # another odd constant, spacing the rows' starting states
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finaliser multipliers
_ONE = 0x3FF0000000000000  # the bits of 1.0: OR-ed with 52 random mantissa bits, a float64 uniform in [1, 2)
_ARCS = 1024  # cos and sin of 2 pi u come from a table at the centres of this many equal arcs, then a rotation
_TABLE = np.stack([np.cos((np.arange(_ARCS) + 0.5) * (2 * np.pi / _ARCS)),
                   np.sin((np.arange(_ARCS) + 0.5) * (2 * np.pi / _ARCS))])


def derived_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for one stream (x_T, SDE noise, ...) of a user seed."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"--seed: {seed!r} is not allowed; it must be an integer >= 0")
    return _stream_key(int(seed), int(stream))


@functools.lru_cache(maxsize=256)
def _stream_key(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _mix(z: int) -> int:
    """splitmix64's finaliser on one Python int: a bijection of 64-bit words with full avalanche."""
    z ^= z >> 30
    z = (z * _M1) & _MASK64
    z ^= z >> 27
    z = (z * _M2) & _MASK64
    return z ^ (z >> 31)


def splitmix64(z: int) -> int:
    """One step of splitmix64 on a 64-bit word: add the golden gamma, then the finaliser."""
    return _mix((int(z) + _GAMMA) & _MASK64)


def _mix_array(x: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """The same finaliser on a uint64 array, in place (numpy's uint64 arithmetic wraps mod 2**64)."""
    for shift, multiplier in ((30, _M1), (27, _M2)):
        np.bitwise_xor(x, np.right_shift(x, np.uint64(shift), out=tmp), out=x)
        np.multiply(x, np.uint64(multiplier), out=x)
    return np.bitwise_xor(x, np.right_shift(x, np.uint64(31), out=tmp), out=x)


@functools.lru_cache(maxsize=64)
def _weyl(pairs: int) -> np.ndarray:
    """[(2p + 1) G, (2p + 2) G] for p < pairs (G the golden gamma): how far a row's words 2p, 2p + 1 lie along its sequence."""
    steps = np.arange(1, 2 * pairs + 1, dtype=np.uint64).reshape(pairs, 2).T * np.uint64(_GAMMA)
    steps = np.ascontiguousarray(steps)
    steps.flags.writeable = False
    return steps


def _box_muller(uniform: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Standard normals, in place: ``uniform`` (2, n) float64 in [1, 2) becomes sqrt(-2 ln u1) (cos, sin)(2 pi u2)
    with u1 = 2 - uniform[0] in (0, 1] and u2 = uniform[1] - 1 in [0, 1); ``scratch`` is (2, n) float64 to use.

    cos and sin of 2 pi u2, to ~1e-15: the table entry of u2's arc, rotated by the rest d (|d| <= pi / _ARCS)
    with d's Taylor series (cos to d^4, sin to d^5: exact to 1e-18). That is +, *, floor and a table lookup
    element by element, no libm call (whose SIMD and scalar paths may round differently), and two to three times
    faster than np.cos and np.sin. Few temporaries: large fresh arrays cost page faults.
    """
    radius = np.subtract(2.0, uniform[0])  # exact
    np.multiply(np.log(radius, out=radius), -2.0, out=radius)
    np.sqrt(radius, out=radius)
    d = np.subtract(uniform[1], 1.0)
    d *= _ARCS  # exact: 52-bit fractions times a power of two
    arc = np.floor(d)
    d -= arc
    d -= 0.5
    d *= 2 * np.pi / _ARCS
    index = arc.astype(np.intp)
    d2, cos_d = np.multiply(d, d, out=scratch[0]), scratch[1]
    np.multiply(d2, 1 / 24, out=cos_d)
    cos_d -= 0.5
    cos_d *= d2
    cos_d += 1.0
    sin_d = np.multiply(d2, 1 / 120, out=arc)
    sin_d -= 1 / 6
    sin_d *= d2
    sin_d += 1.0
    sin_d *= d
    c, s = _TABLE[0].take(index, out=scratch[0], mode="clip"), _TABLE[1].take(index, out=d, mode="clip")
    np.multiply(c, cos_d, out=uniform[0])
    np.multiply(s, cos_d, out=uniform[1])
    uniform[0] -= np.multiply(s, sin_d, out=scratch[1])
    uniform[1] += np.multiply(c, sin_d, out=scratch[1])
    uniform *= radius
    return uniform


def row_normals(seed: int, stream: int, rows, shape, counter: int = 0) -> torch.Tensor:
    """Standard normals of shape (len(rows), *shape), float64 on the CPU, one row per sample.

    Counter-based: value e (the C-order index within a row) of row r is a fixed function of
    (seed, stream, r, counter, e) alone, so a row never depends on which other rows, or how
    many, are drawn with it. Construction: the row's state is splitmix64's finaliser of
    (key + (r + 1) * G'), where key mixes ``derived_seed(seed, stream)`` with ``counter``, and
    the row's words are the splitmix64 generator's outputs from that state (output k is the
    finaliser of state + (k + 1) * golden gamma: BigCrush-clean; rows, whose states are
    pseudo-random 64-bit words, overlap with probability ~ rows^2 * values / 2^64). Words 2p and
    2p + 1 give two 52-bit uniforms u1 in (0, 1], u2 in [0, 1), and Box-Muller turns them into
    values 2p and 2p + 1: sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2), independent N(0, 1).
    """
    key = derived_seed(seed, stream)  # also rejects negative, non-integer and bool seeds (ConfigError)
    if isinstance(rows, range):
        rows = np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and rows.min() < 0:
        raise ValueError(f"row_normals: rows must be >= 0, got {int(rows.min())}")
    shape = tuple(int(s) for s in shape)
    count = math.prod(shape)
    pairs = (count + 1) // 2
    state = (rows.view(np.uint64) + np.uint64(1)) * np.uint64(_ROW_GAMMA)
    state += np.uint64(_mix((key + splitmix64(counter)) & _MASK64))
    _mix_array(state, np.empty_like(state))
    # words[0] and words[1]: the two words of every pair, laid out (pairs, rows) or (rows, pairs), whichever makes
    # numpy's inner loops long; every value is computed element by element, so the layout changes no value
    weyl = _weyl(pairs)
    by_pair = rows.size >= pairs
    words = weyl[:, :, None] + state if by_pair else weyl[:, None, :] + state[:, None]
    scratch = np.empty_like(words)
    _mix_array(words, scratch)
    np.right_shift(words, np.uint64(12), out=words)
    uniform = np.bitwise_or(words, np.uint64(_ONE), out=words).view(np.float64)  # [1, 2): 52 random bits
    both = _box_muller(uniform.reshape(2, -1), scratch.view(np.float64).reshape(2, -1)).reshape(uniform.shape)
    out = np.ascontiguousarray(both.transpose(2, 1, 0) if by_pair else both.transpose(1, 2, 0))  # (rows, pairs, 2)
    out = out.reshape(rows.size, 2 * pairs)
    if 2 * pairs != count:
        out = np.ascontiguousarray(out[:, :count])
    return torch.from_numpy(out.reshape(rows.size, *shape))


class GaussianNoise:
    """Seeded Gaussian noise, one draw per step, in step order: ``noise(step, like, scale)`` is scale * z.

    The k-th draw (k = 0, 1, ...: the loop draws once per noise row, in order) is
    ``row_normals(seed, 1, rows 0..B-1, like.shape[1:], counter=k)``: sample i's noise depends
    only on (seed, i, k), never on the batch size. Draws happen on the CPU in float64 and are
    then cast and moved, so the same seed gives the same noise on every device. Every call
    returns a new tensor.
    """

    STREAM = 1

    def __init__(self, seed: int):
        derived_seed(seed, self.STREAM)  # a bad seed fails here, not at the first SDE step
        self.seed = int(seed)
        self.draws = 0

    def __call__(self, step: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        shape = tuple(like.shape)
        rows, rest = (shape[0], shape[1:]) if shape else (1, ())
        z = row_normals(self.seed, self.STREAM, range(rows), rest, counter=self.draws).reshape(shape)
        self.draws += 1
        if scale != 1.0:
            z.mul_(scale)
        return z.to(like.device, like.dtype)


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
            raise ConfigError(f"--noise: {path} has shape {array.shape}; this run needs {want} (noise draws x batch x dims)")
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


def initial_latents(seed: int, shape: tuple[int, ...], device, dtype, std: float = 1.0, first_row: int = 0) -> torch.Tensor:
    """x_T ~ N(0, std^2 I), drawn in float64 on the CPU from the seed, then moved and cast.

    Row i of the batch (shape[0]) is ``row_normals(seed, 0, [first_row + i], shape[1:])``: sample
    i's x_T depends only on (seed, first_row + i), so a batch of 4 is the first 4 rows of a batch
    of 64. ``std`` is the schedule's ``init_noise_sigma`` (EDM: sqrt(sigma_max^2 + 1), as diffusers draws it).
    """
    shape = tuple(int(s) for s in shape)
    rows, rest = (shape[0], shape[1:]) if shape else (1, ())
    x = row_normals(seed, 0, range(first_row, first_row + rows), rest).reshape(shape)
    if std != 1.0:
        x = x * std
    return x.to(device=device, dtype=dtype)
