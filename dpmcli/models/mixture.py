"""Gaussian mixtures with exact denoisers under the VP forward process.

If x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and x_t = alpha x0 + sigma eps, then x_t is the mixture
sum_k w_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)) and, with gamma_k(x) the posterior
component weights,

    E[x0 | x_t] = sum_k gamma_k (mu_k + alpha s_k^2 / v_k (x - alpha mu_k)),   v_k = alpha^2 s_k^2 + sigma^2
    E[eps | x_t] = sum_k gamma_k sigma / v_k (x - alpha mu_k)

so a mixture model answers every prediction type exactly, at any noise level.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Weights (K,), means (K, D), stds (K, D): the data distribution p0."""

    name: str
    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    notes: tuple[str, ...] = ()  # what loading it decided that the user should hear (weights rescaled)

    def __post_init__(self):
        for key in ("weights", "means", "stds"):
            object.__setattr__(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        check_mixture(self.weights, self.means, self.stds, f"--model {self.name}")
        total = float(self.weights.sum())
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:  # from_dict rescales a file's weights; code gives them summing to 1
            raise ConfigError(f"--model {self.name}: weights sum to {total:.10g}; they must sum to 1 (within {WEIGHT_SUM_TOLERANCE:g})")

    @property
    def dims(self) -> int:
        return self.means.shape[1]

    @property
    def components(self) -> int:
        return self.means.shape[0]

    def _tensors(self, device, dtype):
        key = (str(device), dtype)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = (
                torch.tensor(np.log(self.weights), device=device, dtype=dtype),
                torch.tensor(self.means, device=device, dtype=dtype),
                torch.tensor(self.stds**2, device=device, dtype=dtype),
            )
        return cache[key]

    def posterior(self, x: torch.Tensor, alpha: float, sigma: float):
        """(gamma (B, K), centred (B, K, D) = x - alpha mu, variances (K, D)) at noise level (alpha, sigma)."""
        log_w, mu, var0 = self._tensors(x.device, x.dtype)
        var = alpha * alpha * var0 + sigma * sigma
        centred = x[:, None, :] - alpha * mu[None]
        log_p = -0.5 * ((centred * centred) / var + torch.log(2 * math.pi * var)).sum(-1) + log_w
        gamma = torch.softmax(log_p, dim=1)
        return gamma, centred, var

    def denoise(self, x: torch.Tensor, alpha: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x], E[eps | x]) at noise level (alpha, sigma), both exact."""
        gamma, centred, var = self.posterior(x, alpha, sigma)
        _, mu, var0 = self._tensors(x.device, x.dtype)
        g = gamma[:, :, None]
        x0 = (g * (mu[None] + (alpha * var0 / var)[None] * centred)).sum(1)
        eps = (g * (sigma / var)[None] * centred).sum(1)
        return x0, eps

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p0(x) per sample."""
        log_w, mu, var0 = self._tensors(x.device, x.dtype)
        centred = x[:, None, :] - mu[None]
        log_p = -0.5 * ((centred * centred) / var0 + torch.log(2 * math.pi * var0)).sum(-1) + log_w
        return torch.logsumexp(log_p, dim=1)

    def component_of(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of each sample under p0."""
        gamma, _, _ = self.posterior(x, 1.0, 0.0)
        return gamma.argmax(dim=1)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` float64 samples of p0 on the CPU."""
        w = torch.tensor(self.weights, dtype=torch.float64)
        k = torch.multinomial(w, count, replacement=True, generator=generator)
        z = torch.randn(count, self.dims, generator=generator, dtype=torch.float64)
        return torch.tensor(self.means)[k] + torch.tensor(self.stds)[k] * z


def ring(components: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """The default toy: 8 equal Gaussians on a circle in 2-D."""
    angle = 2 * np.pi * np.arange(components) / components
    means = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return GaussianMixture(
        "ring",
        np.full(components, 1.0 / components),
        means,
        np.full((components, 2), std),
    )


#: Bounds on a mixture, checked whenever one is built (docs/cli.md, "gmm:PATH"). Diffusion
#: models assume data on the unit scale; within these bounds every variance alpha^2 s^2 + sigma^2
#: and every squared distance over it is a normal float32 number, the exact ODE reference reaches
#: its sigma -> 0 limit to ~1e-10 (reference.ode_limit integrates until sigma is 1e-4 of the
#: smallest std), and the exact denoiser's (batch, components, dims) arrays fit in memory.
MIN_STD = 1e-4
MAX_STD = 1e4
MAX_ABS_MEAN = 1e4
MAX_COMPONENTS = 1000
MAX_DIMS = 4096
MAX_SIZE = 16384  # components x dims
WEIGHT_SUM_TOLERANCE = 1e-6
KEYS = ("weights", "means", "stds")


def _where(key: str, index) -> str:
    return key + "".join(f"[{int(i)}]" for i in np.atleast_1d(index))


def check_mixture(weights: np.ndarray, means: np.ndarray, stds: np.ndarray, label: str) -> None:
    """ConfigError (one line starting with ``label``) unless the arrays are a mixture dpmcli can solve exactly."""
    if weights.ndim != 1 or len(weights) == 0:
        raise ConfigError(f"{label}: weights must be a non-empty list of numbers")
    k = len(weights)
    if k > MAX_COMPONENTS:
        raise ConfigError(f"{label}: {k} components is not allowed; at most {MAX_COMPONENTS}")
    if means.ndim != 2 or means.shape[0] != k or means.shape[1] == 0:
        raise ConfigError(f"{label}: means must be a list of {k} non-empty vectors of equal length (one per weight)")
    d = means.shape[1]
    if d > MAX_DIMS or k * d > MAX_SIZE:
        raise ConfigError(
            f"{label}: {k} components x {d} dimensions is not allowed; at most {MAX_DIMS} dimensions "
            f"and {MAX_SIZE} components x dimensions"
        )
    if stds.shape != means.shape:
        raise ConfigError(
            f"{label}: stds must have one value per component (shape ({k},)) or one per component and dimension "
            f"(shape {means.shape}), got shape {stds.shape}"
        )
    for key, array in zip(KEYS, (weights, means, stds)):
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise ConfigError(f"{label}: {_where(key, bad[0])} = {array[tuple(bad[0])]} is not allowed; every value must be finite")
    bad = np.argwhere(weights <= 0)
    if len(bad):
        raise ConfigError(f"{label}: {_where('weights', bad[0])} = {weights[bad[0][0]]:g} is not allowed; weights must be positive")
    bad = np.argwhere((stds < MIN_STD) | (stds > MAX_STD))
    if len(bad):
        raise ConfigError(
            f"{label}: {_where('stds', bad[0])} = {stds[tuple(bad[0])]:g} is not allowed; stds must be between "
            f"{MIN_STD:g} and {MAX_STD:g}"
        )
    bad = np.argwhere(np.abs(means) > MAX_ABS_MEAN)
    if len(bad):
        raise ConfigError(
            f"{label}: {_where('means', bad[0])} = {means[tuple(bad[0])]:g} is not allowed; means must be between "
            f"{-MAX_ABS_MEAN:g} and {MAX_ABS_MEAN:g}"
        )


def _numbers(value, key: str, label: str) -> np.ndarray:
    """A JSON value that must be a number or (nested) lists of numbers, as a float64 array."""
    stack = [(value, key)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            if not item and where != key:
                raise ConfigError(f"{label}: {where} is an empty list; give numbers")
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            shown = json.dumps(item)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ConfigError(f"{label}: {where} is {shown}, not a number; {key} must be (nested) lists of numbers")
    try:
        return np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ConfigError(f"{label}: {key} holds a number too large for float64") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{label}: {key} must be a list of numbers or of equal-length lists of numbers") from None


def from_dict(data: dict, name: str) -> GaussianMixture:
    """A mixture from ``{"weights": [...], "means": [[...]], "stds": [[...]] or [...]}``.

    Weights are relative: they are divided by their sum, and when that sum is not 1 (within
    ``WEIGHT_SUM_TOLERANCE``) the mixture's ``notes`` say so (the command line shows a warning).
    Every bound of :func:`check_mixture` applies.
    """
    missing = [key for key in KEYS if key not in data]
    if missing:
        raise ConfigError(f"--model {name}: missing key {missing[0]!r}; need weights, means and stds")
    weights, means, stds = (_numbers(data[key], key, f"--model {name}") for key in KEYS)
    if weights.ndim == 1 and means.ndim == 2 and stds.ndim == 1 and stds.shape[0] == len(weights):
        stds = np.repeat(stds[:, None], means.shape[1], axis=1)
    check_mixture(weights, means, stds, f"--model {name}")
    total = float(weights.sum())
    notes = ()
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        scaled = weights / total
        shown = ", ".join(f"{w:.4g}" for w in scaled[:8]) + (", ..." if len(scaled) > 8 else "")
        notes = (f"--model {name}: the weights sum to {total:.6g}, not 1; they are divided by their sum ({shown})",)
    return GaussianMixture(name, weights / total, means, stds, notes)


def load_json(path: str | Path, name: str | None = None) -> GaussianMixture:
    label = name or f"gmm:{path}"
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--model {label}: {path} is a folder; give a JSON file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--model {label}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--model {label}: {path} is not UTF-8 text (byte {exc.start}); give a JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model {label}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ConfigError(f"--model {label}: the JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model {label}: the file must hold a JSON object with weights, means and stds")
    return from_dict(data, label)


def gmm64() -> GaussianMixture:
    """A 64-D mixture of 10 components with unequal weights and per-dimension spreads (shipped JSON)."""
    return load_json(DATA_DIR / "gmm64.json", name="gmm64")
