"""Finding and loading what a folder saved by diffusers holds: its layout, scheduler config and components.

``PATH`` of ``--model diffusers:PATH`` is a folder written by diffusers' ``save_pretrained`` -- a
bare UNet (``config.json`` naming ``UNet2DModel`` or ``UNet2DConditionModel``) or a whole pipeline
(``model_index.json``) -- or a Hugging Face hub id whose files are already in the local cache (the
network is touched only when the caller opts in). :func:`read_layout` reads what the folder holds
from its JSON files before any weights load; the components are then loaded one by one (the
pipeline class itself is never built). :mod:`dpmcli.models.hf` puts them together as a model.

diffusers and transformers are imported only when a component is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from .base import folder_files
from .hf_families import FAMILIES, NEVER_LOADED

INSTALL_HINT = 'pip install "dpmcli[diffusers]"'
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
DECODER_NAMES = ("vae", "vqvae")
# what `--model diffusers:` drives, for the error that refuses the rest
DRIVEN_KINDS = (
    "unconditional UNet pipelines (DDPM, DDIM, latent diffusion), Stable Diffusion 1.x/2.x (StableDiffusionPipeline), "
    + ", ".join(FAMILIES)
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

# --------------------------------------------------------------------------- scheduler configs


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


def import_library(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = INSTALL_HINT if module in ("diffusers", "transformers", "huggingface_hub") else f"pip install {module}"
        raise ConfigError(f"--model diffusers: {what} needs the {module} package; install it with: {hint}") from None


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
    hub = import_library("huggingface_hub", "a hub id")
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


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model: cannot read {path.name} ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model: {path.name} does not hold a JSON object")
    return data


@contextlib.contextmanager
def quiet_loading():
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


def weights_variant(folder: Path) -> str | None:
    """"fp16" or "bf16" when a folder holds only such a variant of its weights (model.fp16.safetensors), else None."""
    names = [p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
    found = [m.group(1) for m in (re.search(r"\.(fp16|bf16)[.-]", n) for n in names) if m]
    if not names or len(found) < len(names):
        return None
    return found[0]


def _dtype_word(library) -> str:
    """The name of ``from_pretrained``'s dtype argument: transformers 5 says ``dtype``, older versions and diffusers ``torch_dtype``."""
    if library.__name__ == "transformers" and int(library.__version__.split(".")[0]) >= 5:
        return "dtype"
    return "torch_dtype"


def cast_to(module, dtype: torch.dtype):
    """``module`` with every floating parameter and buffer in ``dtype``, but those its class keeps in float32.

    diffusers without accelerate judges a checkpoint's dtype by its first tensor, and SD3's first one
    is a float32 buffer: the transformer then comes back in float32 whatever ``torch_dtype`` said.
    """
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype and not any(k in name.split(".") for k in keep):
            tensor.data = tensor.data.to(dtype)
    return module


def load_component(library, class_name: str, root: Path, subfolder: str | None, dtype: torch.dtype, what: str):
    cls = getattr(library, class_name, None)
    if cls is None:
        raise ConfigError(f"--model: {what} is a {class_name}, which {library.__name__} {library.__version__} does not have")
    kwargs = {"subfolder": subfolder} if subfolder else {}
    kwargs[_dtype_word(library)] = dtype
    if library.__name__ == "diffusers":
        kwargs["low_cpu_mem_usage"] = importlib.util.find_spec("accelerate") is not None
    folder = root / subfolder if subfolder else root
    variant = weights_variant(folder)
    if variant is not None:
        kwargs["variant"] = variant
    try:
        with quiet_loading():
            return cast_to(cls.from_pretrained(str(root), **kwargs), dtype)
    except Exception as exc:  # noqa: BLE001 - a missing, corrupt or mismatched file is one line for the user, whatever raised it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--model: cannot load {what} ({class_name}) from {folder.name or folder}: {reason}") from None


def load_tokenizer(library, class_name: str, root: Path, subfolder: str = "tokenizer"):
    cls = getattr(library, class_name, None) or library.AutoTokenizer
    try:
        with quiet_loading():
            return cls.from_pretrained(str(root), subfolder=subfolder)
    except (OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"--model: cannot load the tokenizer ({class_name}): {reason}") from None


@torch.no_grad()
def encode_prompt(tokenizer, encoder, text: str, device: torch.device, length: int | None = None) -> torch.Tensor:
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


# --------------------------------------------------------------------------- what a folder holds


@dataclass(frozen=True)
class Layout:
    """What a diffusers folder holds, read from its JSON files before any weights load."""

    root: Path
    label: str  # "--model diffusers:SOURCE", the start of every error
    kind: str  # the pipeline's class, or the bare UNet's
    pipeline_class: str | None  # None for a bare UNet folder
    components: dict  # component name -> (library, class name), as model_index.json lists them
    network_class: str  # the class of the network that predicts (a UNet or a transformer)
    network_subfolder: str | None
    schedule_file: str | None  # the scheduler config, relative to root (None: there is none)
    network: str = "unet"  # the network's component name
    family: str | None = None  # a pipeline of dpmcli.models.hf_families.FAMILIES (None: a UNet pipeline or folder)
    settings: dict = field(default_factory=dict)  # model_index.json's values that are not components

    @property
    def is_pipeline(self) -> bool:
        return self.pipeline_class is not None

    @property
    def conditional(self) -> bool:
        return self.family is not None or self.network_class == "UNet2DConditionModel"

    @property
    def text(self) -> bool:
        """A text-to-image pipeline: a conditional network with a text encoder."""
        return self.conditional and "text_encoder" in self.components

    @property
    def decoder_name(self) -> str | None:
        return next((n for n in DECODER_NAMES if n in self.components), None)


def _schedule_file(root: Path) -> str | None:
    return next((p for p in ("scheduler/scheduler_config.json", "scheduler_config.json") if (root / p).is_file()), None)


def _pipeline_layout(root: Path, label: str, index: dict) -> Layout:
    pipeline_class = str(index.get("_class_name", "pipeline"))
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1]}
    family = FAMILIES.get(pipeline_class)
    network = family.network if family is not None else "unet"
    if network not in components:
        kinds = ", ".join(sorted(components)) or "none"
        raise ConfigError(f"{label}: {pipeline_class} (components: {kinds}) is not a kind dpmcli drives; it drives {DRIVEN_KINDS}")
    if family is None and "text_encoder_2" in components:
        raise ConfigError(f"{label}: {pipeline_class} has two text encoders and is not a kind dpmcli drives; it drives {DRIVEN_KINDS}")
    return Layout(
        root=root,
        label=label,
        kind=pipeline_class,
        pipeline_class=pipeline_class,
        components=components,
        network_class=components[network][1],
        network_subfolder=network if (root / network / "config.json").is_file() else None,
        schedule_file=_schedule_file(root),
        network=network,
        family=pipeline_class if family is not None else None,
        settings={k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)},
    )


def read_layout(root: Path, label: str) -> Layout:
    """The layout of a pipeline folder (model_index.json) or a bare UNet folder (config.json); ConfigError otherwise."""
    index = read_json(root / "model_index.json") if (root / "model_index.json").is_file() else None
    root_config = read_json(root / "config.json") if (root / "config.json").is_file() else None
    if index is not None:
        layout = _pipeline_layout(root, label, index)
    elif root_config is not None and root_config.get("_class_name") in UNET_CLASSES:
        layout = Layout(
            root=root,
            label=label,
            kind=root_config["_class_name"],
            pipeline_class=None,
            components={},
            network_class=root_config["_class_name"],
            network_subfolder=None,
            schedule_file="scheduler_config.json" if (root / "scheduler_config.json").is_file() else None,
        )
    else:
        found = f" (config.json names {root_config.get('_class_name')!r})" if root_config else ""
        raise ConfigError(
            f"{label}: not a diffusers folder{found}; expected model_index.json (a pipeline: {DRIVEN_KINDS}) "
            f"or config.json naming {' or '.join(UNET_CLASSES)}"
        )
    if layout.family is None and layout.network_class not in UNET_CLASSES:
        raise ConfigError(f"{label}: the unet is a {layout.network_class}; dpmcli drives {' and '.join(UNET_CLASSES)}")
    return layout


# Components that never touch the latents a sampler returns: a pipeline's identity leaves their files out.
NOT_IN_IDENTITY = (*DECODER_NAMES, "safety_checker", "feature_extractor")


def identity_files(layout: Layout) -> list[tuple[str, Path]]:
    """The files a model's predictions depend on, named relative to its folder: a bare UNet folder's
    every file, a pipeline's all but its decoder's, safety checker's and feature extractor's."""
    return folder_files(layout.root, NOT_IN_IDENTITY if layout.is_pipeline else ())


def check_components(layout: Layout) -> None:
    """A conditional pipeline has what text-to-image needs: its text encoders, their tokenizers and a VAE."""
    label, name = layout.label, layout.pipeline_class
    if layout.family is not None:
        for component in FAMILIES[layout.family].needs:
            if component not in layout.components:
                raise ConfigError(f"{label}: {name} lists no {component}; it needs {', '.join(FAMILIES[layout.family].needs)}")
            if not (layout.root / component).is_dir():
                raise ConfigError(f"{label}: {name}'s {component} is missing (no folder {component}/)")
        return
    if layout.conditional and layout.is_pipeline and not layout.text:
        raise ConfigError(f"{label}: {name} has a conditional UNet but no text_encoder; dpmcli supports text-to-image pipelines")
    if layout.text and "tokenizer" not in layout.components:
        raise ConfigError(f"{label}: {name} has a text_encoder but no tokenizer")
    if layout.text and layout.decoder_name is None:
        raise ConfigError(f"{label}: {name} has no vae to decode its latents")


# --------------------------------------------------------------------------- the networks


def unet_size(value) -> tuple[int, int]:
    """(height, width) of a config's sample_size (one number or a pair)."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def check_unet(unet, label: str, allow: tuple[str, ...] = ()) -> None:
    """Refuse a UNet that needs conditioning dpmcli does not give (``allow``: config keys its pipeline family provides)."""
    config = unet.config
    for key, what in (
        ("class_embed_type", "class labels"),
        ("num_class_embeds", "class labels"),
        ("addition_embed_type", "extra conditioning (e.g. SDXL's pooled text and size embeddings)"),
        ("time_cond_proj_dim", "a guidance embedding (e.g. latent consistency models)"),
        ("encoder_hid_dim_type", "projected image or text embeddings"),
    ):
        if key not in allow and getattr(config, key, None) is not None:
            raise ConfigError(f"{label}: this UNet needs {what}, which dpmcli does not provide")
    if getattr(config, "time_embedding_type", "positional") == "fourier":
        raise ConfigError(f"{label}: this UNet takes noise levels (Fourier features, a VE score model), not VP timesteps")


def load_unet(diffusers, layout: Layout, device: torch.device, dtype: torch.dtype):
    """The UNet on ``device`` in ``dtype``, in eval mode; refused if it needs conditioning dpmcli does not give."""
    unet = load_component(diffusers, layout.network_class, layout.root, layout.network_subfolder, dtype, "the unet")
    unet = unet.to(device).eval().requires_grad_(False)
    check_unet(unet, layout.label)
    return unet


def vae_scale_factor(config: dict) -> int:
    """How many image pixels a latent pixel spans: 2 ** (VAE levels - 1) (AutoencoderDC names its levels per side).
    ``config`` is a VAE's config (a dict, or a module's ``config``); without levels, 8, as the pipelines assume."""
    levels = config.get("block_out_channels") or config.get("encoder_block_out_channels")
    return 2 ** (len(levels) - 1) if levels else 8


def decoder_dtype(layout: Layout, name: str, class_name: str, dtype: torch.dtype) -> torch.dtype:
    """float32 for a VAE that says it overflows in float16 (``force_upcast``, on by default in AutoencoderKL), else ``dtype``."""
    config_path = layout.root / name / "config.json"
    upcast = config_path.is_file() and read_json(config_path).get("force_upcast", class_name == "AutoencoderKL")
    return torch.float32 if dtype == torch.float16 and upcast else dtype


def check_size(option: str, value: int | None, multiple: int, why: str) -> None:
    """Refuse an image size that is not a positive multiple of ``multiple`` (None: the default, fine)."""
    if value is None:
        return
    if not isinstance(value, int) or value <= 0 or value % multiple:
        raise ConfigError(f"{option}: {value!r} is not allowed; it must be a positive multiple of {multiple} ({why})")


def check_latent_channels(layout: Layout, name: str, decoder, in_channels: int) -> None:
    latent_channels = getattr(decoder.config, "latent_channels", None) or getattr(decoder.config, "vq_embed_dim", None)
    if latent_channels is not None and int(latent_channels) != in_channels:
        raise ConfigError(
            f"{layout.label}: the {layout.network} takes {in_channels} channels but the {name} makes {latent_channels} "
            "(an inpainting or image-conditioned pipeline); dpmcli samples text-to-image and unconditional pipelines"
        )


def load_decoder(diffusers, layout: Layout, device: torch.device, dtype: torch.dtype, in_channels: int):
    """(decoder, VAE scale factor) of a latent pipeline; (None, 1) when it has none.

    A VAE that says it overflows in float16 decodes in float32 (:func:`decoder_dtype`).
    """
    name = layout.decoder_name
    if name is None:
        return None, 1
    library, class_name = layout.components[name]
    if library != "diffusers":
        raise ConfigError(f"{layout.label}: the {name} is a {library} {class_name}; dpmcli loads diffusers autoencoders")
    decoder = load_component(diffusers, class_name, layout.root, name, decoder_dtype(layout, name, class_name, dtype), f"the {name}")
    decoder = decoder.to(device).eval().requires_grad_(False)
    check_latent_channels(layout, name, decoder, in_channels)
    return decoder, vae_scale_factor(decoder.config)


def load_named(layout: Layout, name: str, device: torch.device, dtype: torch.dtype):
    """One component of a pipeline by its name in model_index.json: a tokenizer or a network
    (on ``device``, in eval mode, in ``dtype``; a VAE that overflows in float16 in float32)."""
    library_name, class_name = layout.components[name]
    library = import_library(library_name, f"the {name} of {layout.pipeline_class}")
    if "Tokenizer" in class_name:
        return load_tokenizer(library, class_name, layout.root, name)
    module_dtype = decoder_dtype(layout, name, class_name, dtype) if name in DECODER_NAMES else dtype
    module = load_component(library, class_name, layout.root, name, module_dtype, f"the {name}")
    return module.to(device).eval().requires_grad_(False)


def load_components(layout: Layout, device: torch.device, dtype: torch.dtype) -> dict:
    """Every component the pipeline lists, loaded one by one, but those a sampler never needs (its
    scheduler included: dpmcli reads the scheduler's config and steps with its own solver)."""
    skipped = (*NEVER_LOADED, "scheduler")
    return {name: load_named(layout, name, device, dtype) for name in layout.components if name not in skipped}
