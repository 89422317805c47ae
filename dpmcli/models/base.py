"""What the loop, the statistics and ``compare`` need from a model, whatever it is.

A model is called as ``model(x, timestep) -> prediction`` on a batch of latents ``x`` shaped
``(batch, *sample_shape)``; the prediction is of type ``prediction_type`` (what the network
was trained to output). Everything else is optional and has a neutral default here:

* ``schedule_options``: SolverConfig fields the model was trained with (betas, number of
  training steps, prediction type, the pipeline's timestep spacing). They replace dpmcli's
  defaults; options the user gives on the command line win over them.
* ``bind(plan, guidance_scale=None)``: the callable ``denoise(x, timestep)`` a run with ``plan``
  calls, at this guidance scale (None: the model's own). The model itself is left unchanged, so
  binds in any order give the same answers. Without a guidance scale it is itself a model: the
  model, or (the exact mixtures, which answer on any schedule) the mixture on the plan's schedule.
* ``mixture``: the exact data distribution when it is known (ground truth for ``compare``).
* ``to_images(x)``: final latents as images in [0, 1], (batch, channels, height, width), for
  ``--save-images``; None when the model has no image view.
* ``quality(samples)``: sample-quality numbers that need no download (a dict; empty if none).
* ``describe()``: what the JSON reports say about the model.
"""

from __future__ import annotations

import math
import functools
from abc import ABC, abstractmethod
from typing import Callable

import torch

from ..errors import ConfigError


class Denoiser(ABC):
    """Base class of dpmcli's models; see the module docstring for the contract."""

    name: str = "model"
    prediction_type: str = "epsilon"
    sample_shape: tuple[int, ...] = ()
    mixture = None
    # the latents' dtype: networks run in --dtype, the solver arithmetic stays in this one
    latent_dtype: torch.dtype | None = None
    default_batch: int = 16  # samples of `dpmcli sample` when --batch is not given
    compare_batch: int = 16  # samples per run of `dpmcli compare`
    # quality() keys worth a column in compare tables, with their headers
    quality_columns: dict[str, str] = {}
    # the classifier-free guidance scale of a plain call; None: not guided. A guided model's
    # __call__ also takes ``guidance_scale=`` (compare sweeps it through ``bind``)
    guidance_scale: float | None = None
    notes: tuple[str, ...] = ()  # what the loader decided that the user should hear (shown as warnings)
    grid_columns: int | None = None  # images per row of --save-images (None: a square grid)

    @property
    def schedule_options(self) -> dict:
        return {}

    @property
    def dims(self) -> int:
        return math.prod(int(size) for size in self.sample_shape)

    def bind(self, plan, guidance_scale: float | None = None) -> Callable[[torch.Tensor, object], torch.Tensor]:
        """What a run with ``plan`` calls: ``denoise = model.bind(plan); denoise(x, t)``; the model is unchanged.

        ``guidance_scale``: classifier-free guidance for this run (None: the model's own scale).
        """
        if guidance_scale is None:
            return self
        if self.guidance_scale is None:
            raise ConfigError(f"--guidance-scale: model {self.name!r} is not guided; drop --guidance-scale")
        return functools.partial(self, guidance_scale=guidance_scale)

    @abstractmethod
    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        """The prediction of type ``prediction_type`` for latents ``x`` at ``timestep``."""

    @property
    def has_images(self) -> bool:
        """Whether ``to_images`` draws the samples (checked before a run that should write them)."""
        return False

    def to_images(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def quality(self, samples: torch.Tensor) -> dict:
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "prediction_type": self.prediction_type, "sample_shape": list(self.sample_shape)}


def timestep_batch(timestep, x: torch.Tensor) -> torch.Tensor:
    """A timestep (float, int or 0-d tensor) as a (batch,) float32 tensor on x's device."""
    if isinstance(timestep, torch.Tensor):
        value = timestep.reshape(-1)[0].item()
    else:
        value = float(timestep)
    return torch.full((x.shape[0],), value, device=x.device, dtype=torch.float32)


def guided(unconditional: torch.Tensor, conditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: u + s (c - u); s = 1 is the conditional model alone, 0 the unconditional."""
    return unconditional + scale * (conditional - unconditional)
