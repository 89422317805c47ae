"""Things that look like a network: ``model(x, timestep) -> prediction`` (contract: base.py)."""

from __future__ import annotations

import torch

from ..coefficients import prediction_of
from ..errors import ConfigError
from ..schedule import Schedule
from ..stats import mixture_summary
from .base import Denoiser
from .digits import VARIANTS, load_digits_model
from .hf import load_diffusers_model
from .mixture import GaussianMixture, gmm64, load_json, ring

MODEL_NAMES = ("ring", "gmm64", "gmm:PATH.json", "digits", "digits:DIR", "digits-flow", "digits-flow:DIR", "diffusers:PATH")


class MixtureModel(Denoiser):
    """An exact denoiser for a Gaussian mixture, in the configured prediction type.

    The timestep is mapped to (alpha_t, sigma_t) through the same schedule the plan uses, so
    fractional timesteps give exactly the noise level the solver assumes.
    """

    default_batch = 1024
    compare_batch = 4096

    def __init__(self, mixture: GaussianMixture, schedule: Schedule | None = None, prediction_type: str = "epsilon"):
        self.mixture = mixture
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.name = mixture.name
        self.notes = tuple(mixture.notes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.mixture.dims,)

    def bind(self, plan, guidance_scale: float | None = None) -> "MixtureModel":
        """The same mixture on the plan's schedule, in its prediction type (this model is unchanged).

        An exact model answers any prediction type, on whatever schedule the plan uses.
        """
        super().bind(plan, guidance_scale)  # refuses a guidance scale: a mixture is not guided
        return MixtureModel(self.mixture, plan.schedule, plan.config.prediction_type)

    def quality(self, samples: torch.Tensor) -> dict:
        return mixture_summary(self.mixture, samples)

    def noise_level(self, timestep) -> tuple[float, float]:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.reshape(-1)[0].item()
        return self.schedule.noise_level(float(timestep))

    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        """What a perfect network outputs, told what a network is told (EDM: c_in x and c_noise)."""
        alpha, sigma = self.noise_level(timestep)
        work = x if x.dtype == torch.float64 else x.float()
        scale = self.schedule.input_scale(sigma)
        if scale != 1.0:
            work = work / scale
        x0, eps = self.mixture.denoise(work, alpha, sigma)
        kind = self.prediction_type
        if self.schedule.process == "edm":
            c_skip, c_out = self.schedule.preconditioning(kind, sigma)
            out = (x0 - c_skip * work) / c_out  # the F with x0 = c_skip x + c_out F
        else:
            out = prediction_of(kind, x0, eps, alpha, sigma)
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


def is_mixture(name: str) -> bool:
    return name in ("ring", "gmm64") or name.startswith("gmm:")


def digits_process(name: str) -> str | None:
    """The process of the digits model a ``--model`` value names ("vp": digits[:DIR], "flow": digits-flow[:DIR]), else None."""
    for process, stem in VARIANTS.items():
        if name == stem or name.startswith(stem + ":"):
            return process
    return None


def conditioning_flag(name: str) -> str:
    """The command-line flag of a conditioning option (``class_label`` is ``--class``)."""
    return "--class" if name == "class_label" else "--" + name.replace("_", "-")


def load_model(name: str, *, device=None, dtype=torch.float32, **options) -> Denoiser:
    """The model a ``--model`` value names; ``options`` are the conditioning flags
    (class_label, guidance_scale, prompt, negative_prompt, height, width, allow_download).

    Options a model cannot use are a ConfigError, so a flag is never silently ignored.
    """
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    if is_mixture(name):
        if given:
            raise ConfigError(f"{conditioning_flag(next(iter(given)))}: model {name!r} takes no conditioning; it applies to digits and diffusers models")
        return MixtureModel(load_mixture(name))
    process = digits_process(name)
    if process is not None:
        stem = VARIANTS[process]
        unknown = sorted(set(given) - {"class_label", "guidance_scale"})
        if unknown:
            raise ConfigError(f"{conditioning_flag(unknown[0])}: the {stem} model takes --class and --guidance-scale only")
        folder = None
        if name.startswith(stem + ":"):
            folder = name[len(stem) + 1:]
            if not folder:
                command = "dpmcli train digits" + (" --process flow" if process == "flow" else "")
                raise ConfigError(f"--model: '{stem}:' needs a folder written by `{command}`, as in {stem}:runs/{stem}")
        label = options.get("class_label")
        given["class_label"] = "all" if label is None else label  # the default grid shows every digit
        return load_digits_model(folder, device=device, dtype=dtype, process=process, **given)
    if name.startswith("diffusers:"):
        source = name[len("diffusers:"):]
        if not source:
            raise ConfigError("--model: 'diffusers:' needs a folder saved by diffusers or a hub id, as in diffusers:./ddpm-cifar10")
        if "class_label" in given:
            raise ConfigError("--class: diffusers models are conditioned by --prompt, not --class")
        return load_diffusers_model(source, device=device, dtype=dtype, **given)
    raise ConfigError(f"--model: {name!r} is not allowed; choose one of: {', '.join(MODEL_NAMES)}")


__all__ = ["Denoiser", "GaussianMixture", "MixtureModel", "MODEL_NAMES", "is_mixture", "load_mixture", "load_model", "ring", "gmm64"]
