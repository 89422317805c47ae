"""Networks saved by diffusers as dpmcli models: ``--model diffusers:PATH``.

``PATH`` is a folder written by diffusers' ``save_pretrained`` -- a bare UNet (``config.json``
naming ``UNet2DModel`` or ``UNet2DConditionModel``) or a whole pipeline (``model_index.json``):
an unconditional one (DDPM, DDIM, latent diffusion: a ``unet`` and a ``scheduler``, perhaps a
``vae``/``vqvae``) or a text-to-image one shaped like Stable Diffusion (``unet``, ``vae``,
``text_encoder``, ``tokenizer``). It may also be a Hugging Face hub id whose files are already
in the local cache; the network is touched only when the caller opts in (``allow_download``).

The components are loaded one by one (:mod:`dpmcli.models.hf_loading`); the pipeline class
itself is never built. What the pipeline's scheduler config says about the training schedule
(betas, number of training steps, prediction type, timestep spacing, ...) becomes
``schedule_options``, in SolverConfig's names (:mod:`dpmcli.vocabulary`); the solver itself is
dpmcli's. The network runs in the dtype asked for, on the device asked for, while the latents
and every solver operation stay in float32 (float64 when asked): ``__call__`` converts on the
way in and out.

diffusers and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import vocabulary
from ..devices import DTYPES
from ..errors import ConfigError
from .base import Denoiser, files_digest, guided
from .hf_families import FAMILIES, Conditioning
from .hf_loading import (
    DRIVEN_KINDS,
    CACHE_MAY_LACK,
    DECODER_NAMES,
    INSTALL_HINT,
    NEVER_DOWNLOADED,
    UNET_CLASSES,
    Layout,
    check_components,
    check_size,
    download_ignore_patterns,
    encode_prompt,
    identity_files,
    import_library,
    load_component,
    load_decoder,
    load_tokenizer,
    load_unet,
    pipeline_scheduler_config,
    read_json,
    read_layout,
    resolve_scheduler_config,
    resolve_source,
    scheduler_class_defaults,
    unet_size,
)
from .hf_pipelines import load_family_parts

DEFAULT_TEXT_GUIDANCE = 7.5

# --------------------------------------------------------------------------- schedule options


def schedule_options_from_scheduler_config(config: dict) -> dict:
    """SolverConfig options read from a diffusers scheduler config (the dict of ``scheduler_config.json``).

    Keys the config leaves out take its scheduler class's defaults (when diffusers is
    installed), as diffusers itself would. Raises ConfigError for a schedule dpmcli cannot
    follow (not a discrete VP schedule, a beta schedule or prediction type it does not have);
    the words are read by :func:`dpmcli.vocabulary.schedule_options`.
    """
    cfg = resolve_scheduler_config(dict(config))
    name = cfg.get("_class_name") or "the scheduler config"
    return vocabulary.schedule_options(cfg, where=f"--model: the scheduler config ({name})")


# --------------------------------------------------------------------------- the model


def _forward_unet(unet, x, t, keywords: dict, scale):
    """A UNet of an unconditional or a Stable Diffusion 1.x/2.x pipeline: the prompt's hidden states, if any."""
    return unet(x, t, return_dict=False, **keywords)[0]


class DiffusersModel(Denoiser):
    """A diffusers network (a UNet or a transformer, with its VAE and text encoders when the pipeline has them) as a dpmcli model.

    Build it with :func:`load_diffusers_model`. ``model(x, t)`` runs the network on ``x`` at
    timestep ``t`` (fractional timesteps allowed), with classifier-free guidance for text
    pipelines (Flux: its guidance embedding), and returns the prediction in ``x``'s dtype and device.
    """

    name = "diffusers"

    def __init__(
        self,
        *,
        network,
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
        conditioning: Conditioning | None = None,
        forward=_forward_unet,
        network_name: str = "unet",
        extra_schedule_options: dict | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        notes: tuple[str, ...] = (),
        files: tuple[tuple[str, Path], ...] | None = None,
    ):
        self.network = network
        self.network_name = network_name
        self.forward = forward  # (network, x, timesteps, keywords, guidance scale) -> prediction
        self.files = files  # what identity() hashes (None: not known, so not cacheable)
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
        self._schedule_options.update(extra_schedule_options or {})
        self.prediction_type = self._schedule_options.get("prediction_type", "epsilon")
        self.decoder = decoder
        self.vae_scale_factor = vae_scale_factor
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.guidance_scale = guidance_scale
        self.notes = tuple(notes)
        self.decode_batch = 4
        self.conditional = conditioning is not None
        self._conditioning = conditioning or Conditioning()
        self._context_cache: dict[tuple[int, bool], dict] = {}
        self.name = f"diffusers:{source}"

    @property
    def unet(self):
        """The network (named for the UNet pipelines that came first)."""
        return self.network

    @property
    def has_images(self) -> bool:
        return self.decoder is not None or self.kind != "UNet2DConditionModel"

    @property
    def guiding(self) -> bool:
        """Whether a plain call (the model's own guidance scale) runs classifier-free guidance."""
        return self._guides(self.guidance_scale)

    def _guides(self, scale: float | None) -> bool:
        return self.conditional and scale is not None and scale > 1.0 and self._conditioning.uncond is not None

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

    def _context(self, batch: int, guiding: bool) -> dict:
        """The network's conditioning keywords for a latent batch (negative prompt first when guiding), made once per batch size."""
        key = (batch, guiding)  # compare switches guidance on and off between runs
        context = self._context_cache.get(key)
        if context is None:
            context = self._conditioning.for_batch(batch, guiding)
            self._context_cache = {key: context}
        return context

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep, guidance_scale: float | None = None) -> torch.Tensor:
        """The UNet's prediction, guided at ``guidance_scale`` (None: the model's own scale)."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        guiding = self._guides(scale)
        batch = x.shape[0]
        inp = x.to(device=self.device, dtype=self.dtype)
        if guiding:
            inp = torch.cat([inp, inp])
        t = self._timesteps(timestep, inp.shape[0])
        out = self.forward(self.network, inp, t, self._context(batch, guiding), scale)
        if out.shape[1] == 2 * inp.shape[1]:  # a learned variance doubles the channels; the first half is the prediction
            out = out[:, : inp.shape[1]]
        out = out.to(device=x.device, dtype=x.dtype)
        if guiding:
            unconditional, conditional = out.chunk(2)
            out = guided(unconditional, conditional, float(scale))
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
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        param = next(self.decoder.parameters())
        images = []
        for chunk in x.split(self.decode_batch):
            z = chunk.to(device=param.device, dtype=torch.float32)
            if mean is not None and std is not None:  # latents standardised per channel (an SDXL-style VAE option)
                per_channel = (1, -1, 1, 1)
                z = z * torch.tensor(std, device=z.device).view(per_channel) / scale + torch.tensor(mean, device=z.device).view(per_channel)
            else:
                z = z / scale
            if shift is not None:
                z = z + float(shift)
            images.append(self.decoder.decode(z.to(param.dtype), return_dict=False)[0].float().cpu())
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)

    def identity(self) -> dict | None:
        """The folder's files by content (its decoder's excepted), the prompts, the latent shape, dtype and device kind."""
        if self.files is None:
            return None
        try:
            digest = files_digest(self.files)
        except OSError:
            return None
        return {
            "model": "diffusers", "kind": self.kind, "files_sha256": digest, "sample_shape": list(self.sample_shape),
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "conditional": self.conditional,
            "negative_embeddings": self._conditioning.uncond is not None,
            "dtype": str(self.dtype).replace("torch.", ""), "device": self.device.type,
        }

    def describe(self) -> dict:
        out = {
            "name": "diffusers",
            "source": self.source,
            "kind": self.kind,
            self.network_name: type(self.network).__name__,
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
            channels = getattr(self.decoder.config, "out_channels", None) or getattr(self.decoder.config, "in_channels", 3)
            out["image_shape"] = [int(channels)] + [s * self.vae_scale_factor for s in self.sample_shape[1:]]
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


def read_schedule(layout: Layout, notes: list[str]) -> tuple[dict | None, dict | None]:
    """(the scheduler config as saved, as the pipeline runs it); None, None without one. Notes what differs.

    The schedule is read here, so that one dpmcli cannot follow fails before any weights load.
    """
    if layout.schedule_file is None:
        notes.append("no scheduler config: the schedule is dpmcli's default unless options say otherwise")
        return None, None
    raw = read_json(layout.root / layout.schedule_file)
    config = pipeline_scheduler_config(raw, layout.pipeline_class)
    as_saved = resolve_scheduler_config(raw).get("steps_offset")
    if config.get("steps_offset") != as_saved:
        notes.append(f"steps_offset {as_saved} read as 1, the correction {layout.pipeline_class} makes on loading")
    schedule_options_from_scheduler_config(config)
    return raw, config


def check_prompt_options(layout: Layout, source: str, *, prompt, negative_prompt, guidance_scale) -> None:
    """Prompts and guidance only for text pipelines; then what a conditional pipeline must hold."""
    if not layout.text:
        for option, value in (("--prompt", prompt), ("--negative-prompt", negative_prompt), ("--guidance-scale", guidance_scale)):
            if value is not None:
                if layout.conditional:
                    why = "a bare UNet2DConditionModel has no text encoder; point --model at its pipeline folder"
                else:
                    why = "it is unconditional"
                raise ConfigError(f"{option}: {source} takes no prompt and no guidance ({why}); drop {option}")
    check_components(layout)


def latent_shape(unet, decoder, scale_factor: int, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(channels, height, width) of the latents: the UNet's sample size, or the image size asked for over the VAE's factor."""
    in_channels = int(unet.config.in_channels)
    unet_h, unet_w = unet_size(unet.config.sample_size)
    unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
    why = f"the VAE's scale factor is {scale_factor}" if decoder is not None else f"the UNet downsamples by {unet_factor}"
    multiple = scale_factor if decoder is not None else unet_factor
    check_size("--height", height, multiple, why)
    check_size("--width", width, multiple, why)
    latent_h = (height if height is not None else unet_h * scale_factor) // scale_factor
    latent_w = (width if width is not None else unet_w * scale_factor) // scale_factor
    return in_channels, latent_h, latent_w


def text_conditioning(layout: Layout, unet, device, dtype, *, prompt, negative_prompt, guidance_scale, notes: list[str]):
    """(prompt embeddings, negative embeddings, guidance scale) of a conditional UNet; (None, None, scale) otherwise.

    A text pipeline encodes its prompts (the negative one only when guidance needs it); a bare
    conditional UNet is conditioned on one zero token so that the network can run.
    """
    if not layout.conditional:
        return None, None, guidance_scale
    if not layout.text:
        width = unet.config.cross_attention_dim
        width = int(width[0] if isinstance(width, (list, tuple)) else width)
        notes.append("a bare conditional UNet: conditioned on one zero token (no text encoder to encode prompts)")
        return torch.zeros(1, 1, width, device=device, dtype=dtype), None, guidance_scale
    components = layout.components
    transformers = import_library("transformers", f"the text encoder of {layout.pipeline_class}")
    guidance_scale = DEFAULT_TEXT_GUIDANCE if guidance_scale is None else float(guidance_scale)
    tokenizer = load_tokenizer(transformers, components["tokenizer"][1], layout.root)
    encoder = load_component(transformers, components["text_encoder"][1], layout.root, "text_encoder", dtype, "the text encoder")
    encoder = encoder.to(device).eval().requires_grad_(False)
    if prompt is None:
        notes.append("no prompt given: the empty prompt")
    prompt_embeds = encode_prompt(tokenizer, encoder, prompt or "", device)
    negative_embeds = None
    if guidance_scale > 1.0:
        if (negative_prompt or "") == (prompt or ""):
            notes.append("the prompt equals the negative prompt: guidance changes nothing, one UNet call per step")
        else:
            negative_embeds = encode_prompt(tokenizer, encoder, negative_prompt or "", device, prompt_embeds.shape[1])
    elif negative_prompt is not None:
        notes.append("guidance scale <= 1: the conditional prediction alone, the negative prompt is unused (as in diffusers)")
    return prompt_embeds, negative_embeds, guidance_scale


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
    device, dtype = _as_device(device), _as_dtype(dtype)
    diffusers = import_library("diffusers", "a diffusers model")
    root = resolve_source(source, allow_download)
    if guidance_scale is not None and not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ConfigError(f"--guidance-scale: {guidance_scale!r} is not allowed; it must be a number >= 0")
    # what the folder holds and the schedule are checked before any weights load
    layout = read_layout(root, f"--model diffusers:{source}")
    notes: list[str] = []
    raw_sched, sched_config = read_schedule(layout, notes)
    check_prompt_options(layout, source, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale)

    if layout.family is not None:
        parts = load_family_parts(
            diffusers, layout, sched_config, device, dtype, prompt=prompt, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, height=height, width=width, notes=notes,
        )
        network = dict(
            network=parts.network, network_name=layout.network, forward=FAMILIES[layout.family].forward,
            sample_shape=parts.sample_shape, decoder=parts.decoder, vae_scale_factor=parts.vae_scale_factor,
            conditioning=parts.conditioning, guidance_scale=parts.guidance_scale, extra_schedule_options=parts.schedule_options,
        )
    else:
        network = _unet_parts(diffusers, layout, device, dtype, prompt=prompt, negative_prompt=negative_prompt,
                              guidance_scale=guidance_scale, height=height, width=width, notes=notes)
    text = layout.text
    return DiffusersModel(
        source=source,
        kind=layout.kind,
        device=device,
        dtype=dtype,
        scheduler_config=sched_config,
        raw_scheduler_config=raw_sched,
        schedule_file=layout.schedule_file,
        prompt=prompt if text else None,
        negative_prompt=negative_prompt if text else None,
        notes=tuple(notes),
        files=tuple(identity_files(layout)),
        **network,
    )


def _unet_parts(diffusers, layout: Layout, device, dtype, *, prompt, negative_prompt, guidance_scale, height, width, notes) -> dict:
    """The UNet, decoder, latent shape and prompt conditioning of an unconditional or SD 1.x/2.x pipeline, or a UNet folder."""
    unet = load_unet(diffusers, layout, device, dtype)
    decoder, scale_factor = load_decoder(diffusers, layout, device, dtype, int(unet.config.in_channels))
    sample_shape = latent_shape(unet, decoder, scale_factor, height, width)
    prompt_embeds, negative_embeds, guidance_scale = text_conditioning(
        layout, unet, device, dtype, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale, notes=notes
    )
    conditioning = None
    if prompt_embeds is not None:
        negative = None if negative_embeds is None else {"encoder_hidden_states": negative_embeds}
        conditioning = Conditioning({"encoder_hidden_states": prompt_embeds}, negative)
    return dict(network=unet, sample_shape=sample_shape, decoder=decoder, vae_scale_factor=scale_factor,
                conditioning=conditioning, guidance_scale=guidance_scale if layout.text else None)


__all__ = [
    "CACHE_MAY_LACK",
    "DECODER_NAMES",
    "DEFAULT_TEXT_GUIDANCE",
    "DRIVEN_KINDS",
    "INSTALL_HINT",
    "NEVER_DOWNLOADED",
    "UNET_CLASSES",
    "DiffusersModel",
    "download_ignore_patterns",
    "load_diffusers_model",
    "pipeline_scheduler_config",
    "resolve_scheduler_config",
    "resolve_source",
    "schedule_options_from_scheduler_config",
    "scheduler_class_defaults",
]
