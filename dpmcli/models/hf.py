"""Networks saved by diffusers as dpmcli models: ``--model diffusers:PATH``.

``PATH`` is a folder written by diffusers' ``save_pretrained`` -- a bare UNet (``config.json``
naming ``UNet2DModel`` or ``UNet2DConditionModel``) or a whole pipeline (``model_index.json``):
an unconditional one (DDPM, DDIM, latent diffusion: a ``unet`` and a ``scheduler``, perhaps a
``vae``/``vqvae``) or a text-to-image one shaped like Stable Diffusion (``unet``, ``vae``,
``text_encoder``, ``tokenizer``). It may also be a Hugging Face hub id whose files are already
in the local cache; the network is touched only when the caller opts in (``allow_download``).

The components are loaded one by one; the pipeline class itself is never built. What the
pipeline's scheduler config says about the training schedule (betas, number of training
steps, prediction type, timestep spacing, ...) becomes ``schedule_options``, in SolverConfig's
names; the solver itself is dpmcli's. The network runs in the dtype asked for, on the device
asked for, while the latents and every solver operation stay in float32 (float64 when asked):
``__call__`` converts on the way in and out.

diffusers and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import re
import sys
from pathlib import Path

import torch

from ..config import BETA_SCHEDULES, PREDICTION_TYPES
from ..devices import DTYPES
from ..errors import ConfigError
from .base import Denoiser, guided

INSTALL_HINT = 'pip install "dpmcli[diffusers]"'
DEFAULT_TEXT_GUIDANCE = 7.5
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
DECODER_NAMES = ("vae", "vqvae")
GRID_SPACINGS = ("linspace", "leading", "trailing")
# diffusers' switches that replace the timestep grid by a sigma grid, and dpmcli's name for it
SIGMA_GRID_FLAGS = (
    ("use_karras_sigmas", "karras"),
    ("use_exponential_sigmas", "exponential"),
    ("use_beta_sigmas", "beta"),
    ("use_lu_lambdas", "logsnr"),
)
# Files a download never needs: other frameworks' weights, the safety checker and its processor.
NEVER_DOWNLOADED = (
    "*.ckpt",
    "*.msgpack",
    "*.h5",
    "*.onnx",
    "*.onnx_data",
    "*.pb",
    "*.ot",
    "*.tflite",
    "*.mlmodel*",
    "safety_checker/*",
    "feature_extractor/*",
)

# What a cached snapshot may lack and still be used: what downloads skip, in any repository.
CACHE_MAY_LACK = (*NEVER_DOWNLOADED, "*.bin", "*.fp16.*", "*.bf16.*")

# --------------------------------------------------------------------------- schedule options


def scheduler_class_defaults(class_name: str | None) -> dict:
    """The default config of a diffusers scheduler class ({} when diffusers or the class is missing)."""
    if not class_name or not class_name.endswith("Scheduler"):
        return {}
    try:
        diffusers = importlib.import_module("diffusers")
        cls = getattr(diffusers, class_name)
    except (ImportError, AttributeError):
        return {}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {
        name: p.default
        for name, p in params.items()
        if name != "self" and p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    }


def resolve_scheduler_config(config: dict) -> dict:
    """``config`` with the keys it leaves out filled in from its scheduler class's defaults.

    A scheduler built from the file would use those defaults (diffusers'
    ``Scheduler.from_config``), and so does a scheduler built from ``pipe.scheduler.config``.
    """
    return {**scheduler_class_defaults(config.get("_class_name")), **config}


def _sigmoid_betas(n: int, start: float, end: float) -> tuple[float, ...]:
    """diffusers' "sigmoid" schedule (float32), as a table of betas."""
    ramp = torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start
    return tuple(float(b) for b in ramp.tolist())


def schedule_options_from_scheduler_config(config: dict) -> dict:
    """SolverConfig options read from a diffusers scheduler config (the dict of ``scheduler_config.json``).

    Keys the config leaves out take its scheduler class's defaults (when diffusers is
    installed), as diffusers itself would. Raises ConfigError for a schedule dpmcli cannot
    follow (not a discrete VP schedule, a beta schedule or prediction type it does not have).
    """
    cfg = resolve_scheduler_config(dict(config))
    name = cfg.get("_class_name") or "the scheduler config"
    where = f"scheduler config ({name})"
    if cfg.get("use_flow_sigmas") or ("beta_schedule" not in cfg and cfg.get("trained_betas") is None):
        raise ConfigError(
            f"--model: the {where} does not describe a discrete VP (beta) schedule; dpmcli samples VP diffusion models"
        )
    out: dict = {}
    if cfg.get("num_train_timesteps") is not None:
        out["train_steps"] = int(cfg["num_train_timesteps"])
    if cfg.get("trained_betas") is not None:
        out["trained_betas"] = tuple(float(b) for b in cfg["trained_betas"])
    else:
        schedule = cfg.get("beta_schedule")
        start, end = cfg.get("beta_start"), cfg.get("beta_end")
        if schedule in BETA_SCHEDULES:
            out["beta_schedule"] = schedule
            if start is not None:
                out["beta_start"] = float(start)
            if end is not None:
                out["beta_end"] = float(end)
        elif schedule == "sigmoid" and start is not None and end is not None:
            out["trained_betas"] = _sigmoid_betas(int(cfg.get("num_train_timesteps") or 1000), float(start), float(end))
        else:
            raise ConfigError(
                f"--model: the {where} uses beta_schedule {schedule!r}, which dpmcli does not have "
                f"(it has {', '.join(BETA_SCHEDULES)} and sigmoid)"
            )
    prediction = cfg.get("prediction_type")
    if prediction is not None:
        if prediction not in PREDICTION_TYPES:
            raise ConfigError(
                f"--model: the {where} says prediction_type {prediction!r}; dpmcli supports {', '.join(PREDICTION_TYPES)}"
            )
        out["prediction_type"] = prediction
    spacing = cfg.get("timestep_spacing")
    if spacing is not None:
        if spacing not in GRID_SPACINGS:
            raise ConfigError(
                f"--model: the {where} uses timestep_spacing {spacing!r}; dpmcli follows {', '.join(GRID_SPACINGS)}"
            )
        out["spacing"] = spacing
    for flag, grid in SIGMA_GRID_FLAGS:
        if cfg.get(flag):
            out["spacing"] = grid
            break
    if cfg.get("steps_offset") is not None:
        out["steps_offset"] = int(cfg["steps_offset"])
    if cfg.get("rescale_betas_zero_snr") is not None:
        out["rescale_zero_snr"] = bool(cfg["rescale_betas_zero_snr"])
    final = cfg.get("final_sigmas_type")
    if final is not None:
        if final not in ("zero", "sigma_min"):
            raise ConfigError(f"--model: the {where} says final_sigmas_type {final!r}; dpmcli has zero and sigma_min")
        out["final_sigma"] = final.replace("_", "-")
    if cfg.get("lambda_min_clipped") is not None:
        out["lambda_min_clipped"] = float(cfg["lambda_min_clipped"])
    if cfg.get("thresholding"):
        out["thresholding"] = True
        for key in ("dynamic_thresholding_ratio", "sample_max_value"):
            if cfg.get(key) is not None:
                out[key] = float(cfg[key])
    elif "thresholding" in cfg:
        out["thresholding"] = False
    return out


def pipeline_scheduler_config(raw: dict, pipeline_class: str | None) -> dict:
    """The scheduler config a pipeline really runs with: class defaults filled in, and Stable
    Diffusion's load-time corrections (steps_offset 1, clip_sample off) applied as diffusers applies them."""
    cfg = resolve_scheduler_config(dict(raw))
    if pipeline_class and pipeline_class.startswith("StableDiffusion"):
        if cfg.get("steps_offset", 1) != 1:
            cfg["steps_offset"] = 1
        if cfg.get("clip_sample", False) is True:
            cfg["clip_sample"] = False
    return cfg


# --------------------------------------------------------------------------- finding the files


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--model diffusers: {what} needs the {module} package; install it with: {INSTALL_HINT}") from None


def download_ignore_patterns(files: list[str]) -> list[str]:
    """What a download of a repository holding ``files`` may skip: other formats, the safety
    checker, PyTorch pickles where safetensors exist, and fp16 variants where full weights exist."""
    ignore = list(NEVER_DOWNLOADED)
    if any(f.endswith(".safetensors") for f in files):
        ignore.append("*.bin")  # the same weights, pickled
    present = set(files)
    for f in files:
        for variant in (".fp16.", ".bf16."):
            if variant in f and f.replace(variant, ".") in present:
                ignore.append(f)
    return ignore


def resolve_source(source: str, allow_download: bool = False) -> Path:
    """The local folder that ``source`` names: a folder, or a hub id found in the local cache
    (downloaded first only when ``allow_download``)."""
    label = f"--model diffusers:{source}"
    if not source:
        raise ConfigError("--model: 'diffusers:' needs a folder or a hub id, as in diffusers:./my-pipeline")
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{label}: is a file; expected a folder saved by diffusers (model_index.json or config.json)")
        return path
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise ConfigError(f"{label}: no such folder")
    hub = _import("huggingface_hub", "a hub id")
    from huggingface_hub.utils import HFValidationError

    fetch = f"fetch it first with `hf download {source}` (older huggingface_hub: `huggingface-cli download`), or pass --allow-download"
    try:
        # the files a download of ours skips may be missing without making the snapshot incomplete
        return Path(hub.snapshot_download(source, local_files_only=True, ignore_patterns=CACHE_MAY_LACK))
    except HFValidationError:
        raise ConfigError(f"{label}: no such folder, and not a valid hub id") from None
    except OSError as exc:  # not in the cache: LocalEntryNotFoundError
        if not allow_download:
            raise ConfigError(f"{label}: no such folder, and not in the local Hugging Face cache; {fetch}") from None
        cached_error = exc
    try:
        files = hub.list_repo_files(source)
        return Path(hub.snapshot_download(source, ignore_patterns=download_ignore_patterns(files)))
    except Exception as exc:  # noqa: BLE001 - any failure of the network or the hub is one line for the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{label}: not in the local cache and the download failed ({reason})") from cached_error


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model: cannot read {path.name} ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model: {path.name} does not hold a JSON object")
    return data


@contextlib.contextmanager
def _quiet_loading():
    """Silence diffusers' and transformers' progress bars, advice and error logs while components load.

    Their error logs repeat the exception the caller turns into dpmcli's one line.
    """
    saved = []
    for name in ("diffusers", "transformers"):
        if sys.modules.get(name) is None:  # only libraries already in use
            continue
        module = importlib.import_module(f"{name}.utils.logging")
        saved.append((module, module.get_verbosity(), module.is_progress_bar_enabled()))
        module.set_verbosity(logging.CRITICAL)
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, verbosity, bars in saved:
            module.set_verbosity(verbosity)
            if bars:
                module.enable_progress_bar()


def _weights_variant(folder: Path) -> str | None:
    """"fp16" or "bf16" when a folder holds only such a variant of its weights (model.fp16.safetensors), else None."""
    names = [p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
    found = [m.group(1) for m in (re.search(r"\.(fp16|bf16)[.-]", n) for n in names) if m]
    if not names or len(found) < len(names):
        return None
    return found[0]


def _load_component(library, class_name: str, root: Path, subfolder: str | None, dtype: torch.dtype, what: str):
    cls = getattr(library, class_name, None)
    if cls is None:
        raise ConfigError(f"--model: {what} is a {class_name}, which {library.__name__} {library.__version__} does not have")
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if library.__name__ == "diffusers":
        kwargs["torch_dtype"] = dtype
        kwargs["low_cpu_mem_usage"] = importlib.util.find_spec("accelerate") is not None
    folder = root / subfolder if subfolder else root
    variant = _weights_variant(folder)
    if variant is not None:
        kwargs["variant"] = variant
    try:
        with _quiet_loading():
            module = cls.from_pretrained(str(root), **kwargs)
            if "torch_dtype" not in kwargs:
                # transformers names its dtype argument differently across versions: convert after loading
                module = module.to(dtype)
        return module
    except (OSError, ValueError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--model: cannot load {what} ({class_name}) from {folder.name or folder}: {reason}") from None


def _load_tokenizer(library, class_name: str, root: Path):
    cls = getattr(library, class_name, None) or library.AutoTokenizer
    try:
        with _quiet_loading():
            return cls.from_pretrained(str(root), subfolder="tokenizer")
    except (OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--model: cannot load the tokenizer ({class_name}): {reason}") from None


# --------------------------------------------------------------------------- the model


class DiffusersModel(Denoiser):
    """A diffusers UNet (with its VAE and text encoder when the pipeline has them) as a dpmcli model.

    Build it with :func:`load_diffusers_model`. ``model(x, t)`` runs the UNet on ``x`` at
    timestep ``t`` (fractional timesteps allowed), with classifier-free guidance for text
    pipelines, and returns the prediction in ``x``'s dtype and device.
    """

    name = "diffusers"

    def __init__(
        self,
        *,
        unet,
        source: str,
        kind: str,
        sample_shape: tuple[int, ...],
        device: torch.device,
        dtype: torch.dtype,
        scheduler_config: dict | None = None,
        raw_scheduler_config: dict | None = None,
        schedule_file: str | None = None,
        decoder=None,
        vae_scale_factor: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_embeds: torch.Tensor | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        notes: tuple[str, ...] = (),
    ):
        self.unet = unet
        self.source = source
        self.kind = kind
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.device = device
        self.dtype = dtype
        self.latent_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.pipeline_scheduler_config = scheduler_config
        self.raw_scheduler_config = raw_scheduler_config
        self.schedule_file = schedule_file
        self._schedule_options = schedule_options_from_scheduler_config(scheduler_config) if scheduler_config else {}
        self.prediction_type = self._schedule_options.get("prediction_type", "epsilon")
        self.decoder = decoder
        self.vae_scale_factor = vae_scale_factor
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.guidance_scale = guidance_scale
        self.notes = tuple(notes)
        self.decode_batch = 4
        config = unet.config
        self.conditional = prompt_embeds is not None
        self._prompt_embeds = prompt_embeds
        self._negative_embeds = negative_embeds
        self._context_cache: dict[tuple[int, bool], torch.Tensor] = {}
        # UNets trained with a learned variance output twice the channels; the first half is the prediction
        self._out_channels = int(config.in_channels) if int(config.out_channels) == 2 * int(config.in_channels) else None
        self.name = f"diffusers:{source}"

    @property
    def has_images(self) -> bool:
        return self.decoder is not None or self.kind != "UNet2DConditionModel"

    @property
    def guiding(self) -> bool:
        # read at every call: compare sweeps the guidance scale on one loaded model
        scale = self.guidance_scale
        return self.conditional and scale is not None and scale > 1.0 and self._negative_embeds is not None

    @property
    def default_batch(self) -> int:
        return 1 if self.conditional and self.decoder is not None else 4  # text-to-image latents are costly

    @property
    def compare_batch(self) -> int:
        return self.default_batch

    @property
    def schedule_options(self) -> dict:
        return dict(self._schedule_options)

    def _timesteps(self, timestep, batch: int) -> torch.Tensor:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.reshape(-1)[0].item()
        value = float(timestep)
        if value.is_integer():  # what diffusers' schedulers hand the UNet
            return torch.full((batch,), int(value), dtype=torch.long, device=self.device)
        return torch.full((batch,), value, dtype=torch.float32, device=self.device)

    def _context(self, batch: int) -> torch.Tensor:
        """Prompt embeddings for a latent batch (negative prompt first when guiding), made once per batch size."""
        key = (batch, self.guiding)  # compare switches guidance on and off between runs
        context = self._context_cache.get(key)
        if context is None:
            cond = self._prompt_embeds.expand(batch, -1, -1)
            if self.guiding:
                cond = torch.cat([self._negative_embeds.expand(batch, -1, -1), cond])
            context = cond.contiguous()
            self._context_cache = {key: context}
        return context

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        batch = x.shape[0]
        inp = x.to(device=self.device, dtype=self.dtype)
        if self.guiding:
            inp = torch.cat([inp, inp])
        t = self._timesteps(timestep, inp.shape[0])
        if self.conditional:
            out = self.unet(inp, t, encoder_hidden_states=self._context(batch), return_dict=False)[0]
        else:
            out = self.unet(inp, t, return_dict=False)[0]
        if self._out_channels is not None:
            out = out[:, : self._out_channels]
        out = out.to(device=x.device, dtype=x.dtype)
        if self.guiding:
            unconditional, conditional = out.chunk(2)
            out = guided(unconditional, conditional, float(self.guidance_scale))
        return out

    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.decoder is None:
            if self.kind == "UNet2DConditionModel":
                return None  # latents of a bare conditional UNet: no decoder to see them with
            return (x.float() / 2 + 0.5).clamp(0, 1).cpu()
        cfg = self.decoder.config
        scale = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        shift = getattr(cfg, "shift_factor", None)
        param = next(self.decoder.parameters())
        images = []
        for chunk in x.split(self.decode_batch):
            z = chunk.to(device=param.device, dtype=torch.float32) / scale
            if shift is not None:
                z = z + float(shift)
            images.append(self.decoder.decode(z.to(param.dtype), return_dict=False)[0].float().cpu())
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)

    def describe(self) -> dict:
        out = {
            "name": "diffusers",
            "source": self.source,
            "kind": self.kind,
            "unet": type(self.unet).__name__,
            "scheduler": (self.pipeline_scheduler_config or {}).get("_class_name"),
            "schedule_from": self.schedule_file or "none (no scheduler config: dpmcli's default schedule)",
            "prediction_type": self.prediction_type,
            "sample_shape": list(self.sample_shape),
            "latent": self.decoder is not None,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        if self.decoder is not None:
            out["vae_scale_factor"] = self.vae_scale_factor
            out["image_shape"] = [int(self.decoder.config.out_channels)] + [s * self.vae_scale_factor for s in self.sample_shape[1:]]
        if self.conditional:
            out["prompt"] = self.prompt
            out["negative_prompt"] = self.negative_prompt
            out["guidance_scale"] = self.guidance_scale
            out["classifier_free_guidance"] = self.guiding
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# --------------------------------------------------------------------------- loading


def _as_device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"--dtype: {dtype!r} is not allowed; choose one of: {', '.join(DTYPES)}")


def _size(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _check_size(option: str, value: int | None, multiple: int, why: str) -> None:
    if value is None:
        return
    if not isinstance(value, int) or value <= 0 or value % multiple:
        raise ConfigError(f"{option}: {value!r} is not allowed; it must be a positive multiple of {multiple} ({why})")


def _unet_checks(unet, label: str) -> None:
    config = unet.config
    for key, what in (
        ("class_embed_type", "class labels"),
        ("num_class_embeds", "class labels"),
        ("addition_embed_type", "extra conditioning (e.g. SDXL's pooled text and size embeddings)"),
        ("time_cond_proj_dim", "a guidance embedding (e.g. latent consistency models)"),
        ("encoder_hid_dim_type", "projected image or text embeddings"),
    ):
        if getattr(config, key, None) is not None:
            raise ConfigError(f"{label}: this UNet needs {what}, which dpmcli does not provide")
    if getattr(config, "time_embedding_type", "positional") == "fourier":
        raise ConfigError(f"{label}: this UNet takes noise levels (Fourier features, a VE score model), not VP timesteps")


def load_diffusers_model(
    source: str,
    *,
    device,
    dtype,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    allow_download: bool = False,
) -> DiffusersModel:
    """Load a UNet folder, a pipeline folder or a cached hub id as a :class:`DiffusersModel`.

    ``device`` and ``dtype`` say where and in what precision the networks run (a torch device
    or its name; a torch dtype or one of float32, float64, float16, bfloat16). ``prompt``,
    ``negative_prompt`` and ``guidance_scale`` (default 7.5) apply to text pipelines only;
    ``height`` and ``width`` are image sizes in pixels (default: the UNet's sample size times
    the VAE's scale factor). Every problem is a one-line ConfigError.
    """
    source = source.removeprefix("diffusers:")
    label = f"--model diffusers:{source}"
    device, dtype = _as_device(device), _as_dtype(dtype)
    diffusers = _import("diffusers", "a diffusers model")
    root = resolve_source(source, allow_download)
    if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ConfigError(f"--guidance-scale: {guidance_scale!r} is not allowed; it must be a number >= 0")

    index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else None
    root_config = _read_json(root / "config.json") if (root / "config.json").is_file() else None
    notes: list[str] = []
    if index is not None:
        pipeline_class = str(index.get("_class_name", "pipeline"))
        components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1]}
        if "unet" not in components:
            kinds = ", ".join(sorted(components)) or "none"
            raise ConfigError(f"{label}: {pipeline_class} has no 'unet' (components: {kinds}); dpmcli drives UNet pipelines")
        if "text_encoder_2" in components:
            raise ConfigError(f"{label}: {pipeline_class} has two text encoders (SDXL-style); dpmcli supports one")
        unet_class = components["unet"][1]
        unet_sub = "unet" if (root / "unet" / "config.json").is_file() else None
        sched_file = next(
            (p for p in ("scheduler/scheduler_config.json", "scheduler_config.json") if (root / p).is_file()), None
        )
        kind = pipeline_class
    elif root_config is not None and root_config.get("_class_name") in UNET_CLASSES:
        pipeline_class = None
        components = {}
        unet_class = root_config["_class_name"]
        unet_sub = None
        sched_file = "scheduler_config.json" if (root / "scheduler_config.json").is_file() else None
        kind = unet_class
    else:
        found = f" (config.json names {root_config.get('_class_name')!r})" if root_config else ""
        raise ConfigError(
            f"{label}: not a diffusers folder{found}; expected model_index.json (a pipeline with a unet and a scheduler) "
            f"or config.json naming {' or '.join(UNET_CLASSES)}"
        )
    if unet_class not in UNET_CLASSES:
        raise ConfigError(f"{label}: the unet is a {unet_class}; dpmcli drives {' and '.join(UNET_CLASSES)}")

    raw_sched = _read_json(root / sched_file) if sched_file else None
    sched_config = pipeline_scheduler_config(raw_sched, pipeline_class) if raw_sched is not None else None
    if sched_config is None:
        notes.append("no scheduler config: the schedule is dpmcli's default unless options say otherwise")
    else:
        as_saved = resolve_scheduler_config(raw_sched).get("steps_offset")
        if sched_config.get("steps_offset") != as_saved:
            notes.append(f"steps_offset {as_saved} read as 1, the correction {pipeline_class} makes on loading")
        # read the schedule now: one dpmcli cannot follow fails before any weights load
        schedule_options_from_scheduler_config(sched_config)

    conditional = unet_class == "UNet2DConditionModel"
    text = conditional and "text_encoder" in components
    if not text:
        for option, value in (("--prompt", prompt), ("--negative-prompt", negative_prompt), ("--guidance-scale", guidance_scale)):
            if value is not None:
                if conditional:
                    why = "a bare UNet2DConditionModel has no text encoder; point --model at its pipeline folder"
                else:
                    why = "it is unconditional"
                raise ConfigError(f"{option}: {source} takes no prompt and no guidance ({why}); drop {option}")
    if conditional and index is not None and not text:
        raise ConfigError(f"{label}: {pipeline_class} has a conditional UNet but no text_encoder; dpmcli supports text-to-image pipelines")
    if text and "tokenizer" not in components:
        raise ConfigError(f"{label}: {pipeline_class} has a text_encoder but no tokenizer")
    decoder_name = next((n for n in DECODER_NAMES if n in components), None)
    if text and decoder_name is None:
        raise ConfigError(f"{label}: {pipeline_class} has no vae to decode its latents")

    unet = _load_component(diffusers, unet_class, root, unet_sub, dtype, "the unet")
    unet = unet.to(device).eval().requires_grad_(False)
    _unet_checks(unet, label)
    in_channels = int(unet.config.in_channels)
    unet_h, unet_w = _size(unet.config.sample_size)
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)

    decoder = None
    scale_factor = 1
    if decoder_name is not None:
        library, class_name = components[decoder_name]
        if library != "diffusers":
            raise ConfigError(f"{label}: the {decoder_name} is a {library} {class_name}; dpmcli loads diffusers autoencoders")
        decoder_dtype = dtype
        config_path = root / decoder_name / "config.json"
        # a VAE that says it overflows in float16 (force_upcast, on by default in AutoencoderKL) decodes in float32
        upcast = config_path.is_file() and _read_json(config_path).get("force_upcast", class_name == "AutoencoderKL")
        if dtype == torch.float16 and upcast:
            decoder_dtype = torch.float32
        decoder = _load_component(diffusers, class_name, root, decoder_name, decoder_dtype, f"the {decoder_name}")
        decoder = decoder.to(device).eval().requires_grad_(False)
        scale_factor = 2 ** (len(decoder.config.block_out_channels) - 1)
        latent_channels = getattr(decoder.config, "latent_channels", None) or getattr(decoder.config, "vq_embed_dim", None)
        if latent_channels is not None and int(latent_channels) != in_channels:
            raise ConfigError(
                f"{label}: the unet takes {in_channels} channels but the {decoder_name} makes {latent_channels} "
                "(an inpainting or image-conditioned pipeline); dpmcli samples text-to-image and unconditional pipelines"
            )

    why = f"the VAE's scale factor is {scale_factor}" if decoder is not None else f"the UNet downsamples by {unet_factor}"
    multiple = scale_factor if decoder is not None else unet_factor
    _check_size("--height", height, multiple, why)
    _check_size("--width", width, multiple, why)
    latent_h = (height if height is not None else unet_h * scale_factor) // scale_factor
    latent_w = (width if width is not None else unet_w * scale_factor) // scale_factor
    sample_shape = (in_channels, latent_h, latent_w)

    prompt_embeds = negative_embeds = None
    if conditional:
        if text:
            transformers = _import("transformers", f"the text encoder of {pipeline_class}")
            guidance_scale = DEFAULT_TEXT_GUIDANCE if guidance_scale is None else float(guidance_scale)
            tokenizer = _load_tokenizer(transformers, components["tokenizer"][1], root)
            encoder = _load_component(transformers, components["text_encoder"][1], root, "text_encoder", dtype, "the text encoder")
            encoder = encoder.to(device).eval().requires_grad_(False)
            if prompt is None:
                notes.append("no prompt given: the empty prompt")
            prompt_embeds = _encode(tokenizer, encoder, prompt or "", device)
            if guidance_scale > 1.0:
                if (negative_prompt or "") == (prompt or ""):
                    notes.append("the prompt equals the negative prompt: guidance changes nothing, one UNet call per step")
                else:
                    negative_embeds = _encode(tokenizer, encoder, negative_prompt or "", device, prompt_embeds.shape[1])
            elif negative_prompt is not None:
                notes.append("guidance scale <= 1: the conditional prediction alone, the negative prompt is unused (as in diffusers)")
            del encoder
        else:
            # a bare conditional UNet: a null conditioning (one zero token) so the network can run
            width_ = unet.config.cross_attention_dim
            width_ = int(width_[0] if isinstance(width_, (list, tuple)) else width_)
            prompt_embeds = torch.zeros(1, 1, width_, device=device, dtype=dtype)
            notes.append("a bare conditional UNet: conditioned on one zero token (no text encoder to encode prompts)")
    return DiffusersModel(
        unet=unet,
        source=source,
        kind=kind,
        sample_shape=sample_shape,
        device=device,
        dtype=dtype,
        scheduler_config=sched_config,
        raw_scheduler_config=raw_sched,
        schedule_file=sched_file,
        decoder=decoder,
        vae_scale_factor=scale_factor,
        prompt_embeds=prompt_embeds,
        negative_embeds=negative_embeds,
        prompt=prompt if text else None,
        negative_prompt=negative_prompt if text else None,
        guidance_scale=guidance_scale if text else None,
        notes=tuple(notes),
    )


@torch.no_grad()
def _encode(tokenizer, encoder, text: str, device: torch.device, length: int | None = None) -> torch.Tensor:
    """(1, tokens, width) embeddings of ``text``, padded to the tokenizer's length, as StableDiffusionPipeline makes them."""
    if length is None:
        length = int(tokenizer.model_max_length)
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit is not None and length > int(limit):
            length = int(limit)
    tokens = tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
