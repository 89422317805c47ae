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
* ``for_rows(start)``: the model for a block of the batch from row ``start`` on (itself, unless a
  sample's conditioning depends on its place in the batch).
* ``identity()``: everything the model's predictions depend on besides its inputs (a digest of
  its weights by content, not by path; its conditioning; the dtype and device kind it runs in),
  as a JSON-able dict, or None when that cannot be said (then nothing derived from the model is
  cached: ``compare`` recomputes its reference runs). :func:`file_digest` and
  :func:`files_digest` hash weights cheaply (each file once per process).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable

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

    def for_rows(self, start: int) -> "Denoiser":
        """The model for a block of a batch that begins at row ``start`` (a torchrun rank's share).

        A model whose conditioning depends on a sample's place in the batch (the digits model's
        "all" classes) returns a view that conditions each row as the whole batch would; others
        are the same for every row and return themselves.
        """
        return self

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

    def identity(self) -> dict | None:
        """What the predictions depend on besides (x, timestep, guidance scale), JSON-able; None: unknown, not cacheable."""
        return None


# --------------------------------------------------------------------------- identities: weights by content

CHUNK_BYTES = 1 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256, for this process


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks; remembered per (real path, size, mtime) in this process.

    OSError when the file cannot be read.
    """
    real = os.path.realpath(path)
    info = os.stat(real)
    key = (real, info.st_size, info.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        sha = hashlib.sha256()
        with open(real, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                sha.update(chunk)
        digest = _DIGESTS[key] = sha.hexdigest()
    return digest


def folder_files(folder: str | Path, skip: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """(name relative to ``folder``, path) of every file below it, sorted; hidden entries and the top-level folders in ``skip`` left out."""
    folder, skip = Path(folder), set(skip)
    found = []
    for here, dirs, files in os.walk(folder):
        top = Path(here) == folder
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in skip))
        for name in files:
            if not name.startswith("."):
                path = Path(here) / name
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def files_digest(files: Iterable[tuple[str, Path]]) -> str:
    """One sha256 over the (name, content digest) pairs of ``files``: the same contents elsewhere give the same digest."""
    sha = hashlib.sha256()
    for name, path in sorted(files):
        sha.update(f"{name}\0{file_digest(path)}\n".encode())
    return sha.hexdigest()


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
