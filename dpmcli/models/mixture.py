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


def from_dict(data: dict, name: str) -> GaussianMixture:
    """A mixture from ``{"weights": [...], "means": [[...]], "stds": [[...]] or [...]}``."""
    try:
        weights = np.asarray(data["weights"], dtype=np.float64)
        means = np.asarray(data["means"], dtype=np.float64)
        stds = np.asarray(data["stds"], dtype=np.float64)
    except KeyError as exc:
        raise ConfigError(f"--model {name}: missing key {exc.args[0]!r}; need weights, means and stds") from None
    except (TypeError, ValueError):
        raise ConfigError(f"--model {name}: weights, means and stds must be (nested) lists of numbers") from None
    if weights.ndim != 1 or len(weights) == 0:
        raise ConfigError(f"--model {name}: weights must be a non-empty list")
    k = len(weights)
    if means.ndim != 2 or means.shape[0] != k or means.shape[1] == 0:
        raise ConfigError(f"--model {name}: means must be a list of {k} non-empty vectors (one per weight)")
    if stds.ndim == 1 and stds.shape[0] == k:
        stds = np.repeat(stds[:, None], means.shape[1], axis=1)
    if stds.shape != means.shape:
        raise ConfigError(
            f"--model {name}: stds must have one value per component or one per component and dimension "
            f"(shape {means.shape}), got shape {stds.shape}"
        )
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(means)) and np.all(np.isfinite(stds))):
        raise ConfigError(f"--model {name}: all values must be finite")
    if np.any(weights <= 0):
        raise ConfigError(f"--model {name}: weights must be positive")
    if np.any(stds <= 0):
        raise ConfigError(f"--model {name}: stds must be positive")
    return GaussianMixture(name, weights / weights.sum(), means, stds)


def load_json(path: str | Path, name: str | None = None) -> GaussianMixture:
    label = name or f"gmm:{path}"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--model {label}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model {label}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model {label}: the file must hold a JSON object with weights, means and stds")
    return from_dict(data, label)


def gmm64() -> GaussianMixture:
    """A 64-D mixture of 10 components with unequal weights and per-dimension spreads (shipped JSON)."""
    return load_json(DATA_DIR / "gmm64.json", name="gmm64")
