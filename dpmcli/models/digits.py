"""``--model digits`` and ``digits-flow``: small learned denoisers of 8x8 handwritten digits that ship with dpmcli.

The network takes latents shaped (batch, 1, 8, 8), pixels 0..16 scaled to [-1, 1]; ``digits``
predicts epsilon on a VP path, ``digits-flow`` (the same network, trained by rectified flow)
the velocity v = eps - x0 on x_s = (1 - s) x0 + s eps. Both are conditioned on the class (0..9,
or 10 = no class) so that classifier-free guidance ``u + s (c - u)`` can steer them. A small convolutional classifier trained on the real digits and a
compact copy of the digits themselves ship beside it, so the quality of samples (does the
classifier see the requested digit, and how sure is it; how far are the samples from the nearest
real digit) is measured without a download and without scikit-learn.

Files (in ``dpmcli/models/data/`` for the shipped models, or any folder ``dpmcli train digits``
wrote): ``digits.safetensors`` (the denoiser; ``digits-flow.safetensors`` for the flow model),
``digits.json`` (``digits-flow.json``: architecture, training schedule in diffusers' key names,
recipe, measured quality), and, shared by both, ``digits_classifier.safetensors`` and
``digits_data.npz`` (uint8 images 0..16, labels, the held-out split). ``docs/digits.md`` tells
how they were made.
"""

from __future__ import annotations

import copy

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import report
from ..api import DPMSolver
from ..errors import ConfigError
from ..vocabulary import schedule_options
from .base import Denoiser, file_digest, guided, timestep_batch

DATA_DIR = Path(__file__).parent / "data"
WEIGHTS_FILE = "digits.safetensors"
CONFIG_FILE = "digits.json"
CLASSIFIER_FILE = "digits_classifier.safetensors"
DATA_FILE = "digits_data.npz"
FILES = (WEIGHTS_FILE, CONFIG_FILE, CLASSIFIER_FILE, DATA_FILE)
# the process a digits model was trained on -> its --model name, the stem of its weights and JSON files
VARIANTS = {"vp": "digits", "flow": "digits-flow"}
# the scheduler keys each process's JSON must hold
SCHEDULER_KEYS = {
    "vp": ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "prediction_type"),
    "flow": ("use_flow_sigmas", "num_train_timesteps", "prediction_type"),
}


def model_files(process: str = "vp") -> tuple[str, str, str, str]:
    """(weights, JSON, classifier, data): the files of the digits model trained on ``process`` (the last two are shared)."""
    stem = VARIANTS[process]
    return f"{stem}.safetensors", f"{stem}.json", CLASSIFIER_FILE, DATA_FILE

NUM_CLASSES = 10
NULL_CLASS = 10  # the "no class" label of classifier-free guidance
IMAGE_SHAPE = (1, 8, 8)
PIXEL_MAX = 16  # the digits' pixels are integers 0..16


# --------------------------------------------------------------------------- data


def to_latents(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..16, shaped (N, 8, 8) or (N, 1, 8, 8), as float32 latents in [-1, 1], (N, 1, 8, 8)."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return (x * (2.0 / PIXEL_MAX) - 1.0).reshape(-1, *IMAGE_SHAPE)


@dataclass(frozen=True, eq=False)
class DigitsData:
    """The digits: ``images`` uint8 (N, 8, 8) in 0..16, ``labels`` (N,), ``test`` the held-out mask."""

    images: np.ndarray
    labels: np.ndarray
    test: np.ndarray

    def split(self, held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (n, 1, 8, 8) in [-1, 1], labels (n,) long) of the training or the held-out part."""
        mask = self.test if held_out else ~self.test
        return to_latents(self.images[mask]), torch.as_tensor(self.labels[mask].astype(np.int64))

    def save(self, path: str | Path) -> None:
        """A compressed .npz, byte for byte the same for the same data (fixed entry dates)."""
        import zipfile

        def write(handle) -> None:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, array in (("images", self.images), ("labels", self.labels), ("test", self.test)):
                    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with archive.open(info, "w") as entry:
                        np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)

        report.atomic_write(path, write)


def load_data(path: str | Path, name: str = "digits") -> DigitsData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = DigitsData(archive["images"], archive["labels"], archive["test"].astype(bool))
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"--model {name}: cannot read the digits data {path} ({exc})") from None
    if data.images.ndim != 3 or data.images.shape[1:] != (8, 8) or len(data.labels) != len(data.images):
        raise ConfigError(f"--model {name}: {path} does not hold 8x8 digits with one label each")
    return data


# --------------------------------------------------------------------------- networks


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (B,) -> (B, dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _ResidualBlock(nn.Module):
    """LayerNorm, modulated by the time/class embedding, then a two-layer MLP added back."""

    def __init__(self, hidden: int, embedding: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(embedding, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(emb).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(F.silu(z))))


class DigitsNet(nn.Module):
    """The denoiser: ``forward(x (B,1,8,8), timesteps (B,), labels (B,) in 0..10) -> epsilon (B,1,8,8)``.

    A residual MLP over the 64 pixels; every block is modulated (scale and shift) by one embedding
    of the timestep (sinusoidal features through a small MLP) plus the class (10 = no class).
    """

    def __init__(self, hidden: int = 512, blocks: int = 3, embedding: int = 128):
        super().__init__()
        self.embedding_dim = embedding
        self.time_mlp = nn.Sequential(nn.Linear(embedding, embedding), nn.SiLU(), nn.Linear(embedding, embedding))
        self.label_embedding = nn.Embedding(NUM_CLASSES + 1, embedding)
        self.inp = nn.Linear(64, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, embedding) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 64)

    @property
    def architecture(self) -> dict:
        return {
            "type": "residual-mlp",
            "hidden": self.inp.out_features,
            "blocks": len(self.blocks),
            "embedding": self.embedding_dim,
            "parameters": sum(p.numel() for p in self.parameters()),
        }

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dtype = self.inp.weight.dtype
        features = timestep_embedding(timesteps, self.embedding_dim).to(dtype)
        emb = F.silu(self.time_mlp(features) + self.label_embedding(labels))
        h = self.inp(x.reshape(x.shape[0], 64).to(dtype))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h))).reshape(x.shape[0], *IMAGE_SHAPE)


def build_network(architecture: dict, process: str = "vp") -> DigitsNet:
    if architecture.get("type") != "residual-mlp":
        where = f"--model {VARIANTS[process]}: unknown architecture {architecture.get('type')!r} in {model_files(process)[1]}"
        raise ConfigError(where)
    return DigitsNet(int(architecture["hidden"]), int(architecture["blocks"]), int(architecture["embedding"]))


class DigitsClassifier(nn.Module):
    """A small CNN that tells the ten digits apart: (B,1,8,8) in [-1, 1] -> logits (B, 10)."""

    def __init__(self, channels: int = 32, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def save_weights(module: nn.Module, path: str | Path) -> None:
    """The module's parameters as float16 safetensors, written atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}
    with report.atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})


def load_weights(module: nn.Module, path: str | Path, name: str = "digits") -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        module.load_state_dict({k: v.float() for k, v in state.items()})
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ConfigError(f"--model {name}: cannot load {path} ({' '.join(str(exc).split())[:200]})") from None
    return module.eval().requires_grad_(False)


def round_to_stored(module: nn.Module) -> nn.Module:
    """Round the parameters to float16 and back, as saving and loading does."""
    with torch.no_grad():
        for p in module.state_dict().values():
            p.copy_(p.to(torch.float16).to(p.dtype))
    return module


# --------------------------------------------------------------------------- quality


def nearest_distances(samples: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """L2 distance (in [-1, 1] pixel units, 64 pixels) of every sample to its nearest reference digit."""
    a = samples.reshape(samples.shape[0], -1).double()
    b = reference.reshape(reference.shape[0], -1).double()
    out = [torch.cdist(a[i : i + chunk], b).min(dim=1).values for i in range(0, a.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def score(
    classifier: nn.Module, samples: torch.Tensor, requested: torch.Tensor | None, reference: torch.Tensor, prefix: str = ""
) -> dict:
    """The quality numbers of ``samples`` (B,1,8,8): classifier confidence and accuracy, class shares, NN distance."""
    x = samples.detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
    with torch.no_grad():
        probs = torch.softmax(classifier(x).float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    counts = torch.bincount(predicted, minlength=NUM_CLASSES).double() / max(len(predicted), 1)
    accuracy = None if requested is None else float((predicted == requested.cpu()).double().mean())
    return {
        f"{prefix}samples": int(x.shape[0]),
        f"{prefix}classifier_confidence": float(confidence.double().mean()),
        f"{prefix}class_accuracy": accuracy,
        f"{prefix}class_shares": {str(k): float(counts[k]) for k in range(NUM_CLASSES)},
        f"{prefix}nn_distance": float(nearest_distances(x, reference).median()),
    }


# --------------------------------------------------------------------------- the model


def parse_class_label(value) -> int | str | None:
    """None / "none" (unconditional), "all" (sample i gets class i % 10) or a digit 0..9."""
    if value is None or value == "none":
        return None
    if value == "all":
        return "all"
    if isinstance(value, bool):
        raise ConfigError(f"--class: {value!r} is not allowed; choose all, none or a digit 0..9")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and 0 <= value < NUM_CLASSES:
        return int(value)
    raise ConfigError(f"--class: {value!r} is not allowed; choose all, none or a digit 0..9")


def train_command(process: str, folder) -> str:
    """The command that writes the digits model of ``process`` into ``folder``."""
    return f"dpmcli train digits{' --process flow' if process == 'flow' else ''} --out {folder}"


def read_config(folder: Path, process: str = "vp") -> dict:
    name, file = VARIANTS[process], model_files(process)[1]
    path = folder / file
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--model {name}: {path} is missing; train one with: {train_command(process, folder)}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {name}: cannot read {path} ({exc})") from None
    needed = {"architecture": dict, "scheduler": dict}
    if not isinstance(config, dict) or any(not isinstance(config.get(k), t) for k, t in needed.items()):
        raise ConfigError(f"--model {name}: {path} is not a {file} written by `dpmcli train digits` (it needs 'architecture' and 'scheduler')")
    scheduler = config["scheduler"]
    missing = [k for k in SCHEDULER_KEYS[process] if k not in scheduler]
    if missing:
        raise ConfigError(f"--model {name}: {path} has no {', '.join(missing)} under 'scheduler'")
    if bool(scheduler.get("use_flow_sigmas")) != (process == "flow"):
        raise ConfigError(f"--model {name}: {path} does not describe a {process} schedule (use_flow_sigmas says which)")
    return config


class DigitsModel(Denoiser):
    """The learned digits denoiser as a dpmcli model, with classifier-free guidance.

    ``process`` says which of the two it is: "vp" (``digits``, epsilon) or "flow" (``digits-flow``,
    trained by rectified flow; its prediction type is read from its JSON, flow_prediction).
    ``class_label``: None (unconditional, no guidance), a digit 0..9, or "all" (sample i gets
    class i % 10). ``guidance_scale`` s gives ``u + s (c - u)``: 1 is the conditional network
    alone (one forward), 0 the unconditional one; otherwise the conditional and unconditional
    passes run as one batched forward. None takes the recommendation in ``digits.json``.
    """

    name = "digits"
    prediction_type = "epsilon"
    sample_shape = IMAGE_SHAPE
    default_batch = 100  # a 10 x 10 grid: with class "all", one digit per column
    compare_batch = 500
    quality_columns = {"class_accuracy": "class acc", "classifier_confidence": "confidence", "nn_distance": "NN dist"}

    has_images = True

    @property
    def grid_columns(self) -> int | None:
        return 10 if self.class_label == "all" else None

    def __init__(
        self,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        class_label: int | str | None = "all",
        guidance_scale: float | None = None,
        *,
        folder: str | Path | None = None,
        process: str = "vp",
    ):
        if process not in VARIANTS:
            raise ConfigError(f"--process: {process!r} is not allowed for a digits model; choose one of: {', '.join(VARIANTS)}")
        self.process, self.name = process, VARIANTS[process]
        self.weights_file, self.config_file, _, _ = files = model_files(process)
        self.folder = DATA_DIR if folder is None else Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"--model {self.name}: {self.folder} is not a folder")
        for file in files:
            if not (self.folder / file).is_file():
                raise ConfigError(f"--model {self.name}: {self.folder / file} is missing; `{train_command(process, 'DIR')}` writes all four files")
        self.config = read_config(self.folder, process)
        self.prediction_type = str(self.config["scheduler"]["prediction_type"])
        self.class_label = parse_class_label(class_label)
        given_scale = guidance_scale
        if guidance_scale is None:
            guidance_scale = self.config.get("sampling", {}).get("guidance_scale", 1.0)
        try:
            guidance_scale = float(guidance_scale)
        except (TypeError, ValueError):
            raise ConfigError(f"--guidance-scale: {guidance_scale!r} is not a number") from None
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ConfigError(f"--guidance-scale: {guidance_scale!r} is not allowed; it must be a number >= 0")
        if self.class_label is None and given_scale is not None:
            raise ConfigError("--guidance-scale: unconditional sampling (--class none) is not guided; drop one of them")
        self.guidance_scale = guidance_scale
        self.device = torch.device(device)
        self.dtype = dtype
        # half-precision networks keep the solver's arithmetic in float32
        self.latent_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        try:
            net = build_network(self.config["architecture"], process)
            self.net = load_weights(net, self.folder / self.weights_file, self.name).to(device, dtype)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ConfigError(f"--model {self.name}: the weights in {self.folder} do not fit its {self.config_file} ({detail})") from None
        self._classifier: nn.Module | None = None
        self._data: DigitsData | None = None

    # -- the contract

    @property
    def schedule_options(self) -> dict:
        # the JSON's "scheduler" section is in diffusers' words, read as every scheduler config is read
        return schedule_options(self.config["scheduler"], where=f"--model {self.name}: the scheduler in {self.folder / self.config_file}")

    first_row = 0  # where this model's batch starts in the whole batch (for_rows)

    def for_rows(self, start: int) -> "DigitsModel":
        """With --class all, sample i asks for digit i mod 10 of the whole batch: a block keeps its rows' digits."""
        if start == self.first_row or self.class_label != "all":
            return self
        view = copy.copy(self)
        view.first_row = start
        return view

    def labels(self, batch: int, device=None) -> torch.Tensor | None:
        """The class each of ``batch`` samples asks for (None when unconditional)."""
        device = self.device if device is None else device
        if self.class_label is None:
            return None
        if self.class_label == "all":
            return (torch.arange(batch, device=device) + self.first_row) % NUM_CLASSES
        return torch.full((batch,), self.class_label, dtype=torch.long, device=device)

    def __call__(self, x: torch.Tensor, timestep, guidance_scale: float | None = None) -> torch.Tensor:
        """The guided prediction (epsilon, or flow's velocity) at ``guidance_scale`` (None: the model's own scale)."""
        t = timestep_batch(timestep, x)
        batch = x.shape[0]
        labels = self.labels(batch, x.device)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        with torch.no_grad():
            if labels is None or scale == 0.0:
                null = torch.full((batch,), NULL_CLASS, dtype=torch.long, device=x.device)
                return self.net(x.to(self.dtype), t, null).to(x.dtype)
            if scale == 1.0:
                return self.net(x.to(self.dtype), t, labels).to(x.dtype)
            xin = x.to(self.dtype)
            null = torch.full_like(labels, NULL_CLASS)
            both = self.net(torch.cat([xin, xin]), torch.cat([t, t]), torch.cat([labels, null])).to(x.dtype)
            conditional, unconditional = both[:batch], both[batch:]
            return guided(unconditional, conditional, scale)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.detach().float() + 1.0) * 0.5).clamp(0.0, 1.0).reshape(-1, *IMAGE_SHAPE)

    def quality(self, samples: torch.Tensor) -> dict:
        samples = samples.reshape(-1, *IMAGE_SHAPE)
        reference, _ = self.data.split(held_out=False)
        requested = self.labels(samples.shape[0], "cpu")
        out = score(self.classifier, samples, requested, reference)
        real = self.config.get("real", {})
        out.update({f"real_{k}": real.get(k) for k in ("classifier_confidence", "class_accuracy", "nn_distance")})
        return out

    def describe(self) -> dict:
        arch = self.config["architecture"]
        return {
            **super().describe(),
            "class_label": self.class_label,
            "guidance_scale": None if self.class_label is None else self.guidance_scale,
            "architecture": arch.get("type"),
            "parameters": arch.get("parameters"),
            "weights": "shipped" if self.folder == DATA_DIR else str(self.folder),
        }

    def identity(self) -> dict | None:
        """The weights by content (the shipped file or a trained folder's), the architecture, the class, dtype and device kind."""
        try:
            weights = file_digest(self.folder / self.weights_file)
        except OSError:
            return None
        return {
            "model": self.name, "weights_sha256": weights, "architecture": self.config["architecture"],
            "class_label": self.class_label, "dtype": str(self.dtype).replace("torch.", ""), "device": self.device.type,
            **({"first_row": self.first_row} if self.first_row else {}),  # a block's view asks for other digits
        }

    # -- the classifier and the data, loaded on first use

    @property
    def classifier(self) -> nn.Module:
        if self._classifier is None:
            spec = self.config.get("classifier", {}).get("architecture", {})
            net = DigitsClassifier(int(spec.get("channels", 32)), int(spec.get("hidden", 128)))
            self._classifier = load_weights(net, self.folder / CLASSIFIER_FILE, self.name)
        return self._classifier

    @property
    def data(self) -> DigitsData:
        if self._data is None:
            self._data = load_data(self.folder / DATA_FILE, self.name)
        return self._data


def load_digits_model(folder: str | Path | None = None, device="cpu", dtype: torch.dtype = torch.float32,
                      class_label: int | str | None = "all", guidance_scale: float | None = None, *,
                      process: str = "vp") -> DigitsModel:
    """The shipped digits model, or the one ``dpmcli train digits --out FOLDER`` wrote; ``process="flow"``: digits-flow."""
    return DigitsModel(device, dtype, class_label, guidance_scale, folder=folder, process=process)


def sample_digits(model: DigitsModel, batch: int, seed: int = 0, steps: int = 20, **options) -> torch.Tensor:
    """Samples (batch, 1, 8, 8) from x_T of ``seed`` with DPM-Solver++(2M) (keyword options override)."""
    solver = DPMSolver(seed=seed, **{"algo": "dpmsolver++", "order": 2, "steps": steps, **model.schedule_options, **options})
    x = solver.initial_latents((batch, *IMAGE_SHAPE), device=model.device)
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    return x
