"""Things that look like a network: ``model(x, timestep) -> prediction``."""

from __future__ import annotations


import torch

from ..errors import ConfigError
from ..schedule import Schedule, alpha_sigma
from .mixture import GaussianMixture, gmm64, load_json, ring

MODEL_NAMES = ("ring", "gmm64", "gmm:PATH.json")


class MixtureModel:
    """An exact denoiser for a Gaussian mixture, in the configured prediction type.

    The timestep is mapped to (alpha_t, sigma_t) through the same schedule the plan uses, so
    fractional timesteps give exactly the noise level the solver assumes.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, prediction_type: str = "epsilon"):
        self.mixture = mixture
        self.schedule = schedule
        self.prediction_type = prediction_type

    @property
    def dims(self) -> int:
        return self.mixture.dims

    def noise_level(self, timestep) -> tuple[float, float]:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.reshape(-1)[0].item()
        return alpha_sigma(float(self.schedule.lambda_at(float(timestep))))

    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        alpha, sigma = self.noise_level(timestep)
        work = x if x.dtype == torch.float64 else x.float()
        x0, eps = self.mixture.denoise(work, alpha, sigma)
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        else:
            out = alpha * eps - sigma * x0
        return out.to(x.dtype)


def load_mixture(name: str) -> GaussianMixture:
    if name == "ring":
        return ring()
    if name == "gmm64":
        return gmm64()
    if name.startswith("gmm:"):
        path = name[4:]
        if not path:
            raise ConfigError("--model: 'gmm:' needs a path, as in gmm:mixture.json")
        return load_json(path)
    raise ConfigError(f"--model: {name!r} is not allowed; choose one of: {', '.join(MODEL_NAMES)}")


__all__ = ["GaussianMixture", "MixtureModel", "MODEL_NAMES", "load_mixture", "ring", "gmm64"]
