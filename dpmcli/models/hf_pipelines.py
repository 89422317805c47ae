"""Loading the pipelines of :mod:`dpmcli.models.hf_families` (SDXL, PixArt-Sigma, SD3, Flux, Sana).

Their components are loaded one by one, as for UNet pipelines; then the pipeline class is built
from them once, so that prompts are encoded by the pipeline's own ``encode_prompt`` with the
defaults of its ``__call__`` (sequence lengths, prompt templates, SDXL's zeroed empty negative
prompt). The text encoders are dropped after encoding: sampling keeps the network and the VAE.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .hf_families import FAMILIES, Conditioning, Family, Prompts, flow_mu
from .hf_loading import Layout, check_latent_channels, import_library, load_components, quiet_loading, read_json


@dataclass
class FamilyParts:
    """What a family pipeline contributes to a :class:`~dpmcli.models.hf.DiffusersModel`."""

    network: object
    decoder: object
    vae_scale_factor: int
    sample_shape: tuple[int, int, int]
    conditioning: Conditioning
    guidance_scale: float
    schedule_options: dict  # what the image size decides: Flux's and SD3's dynamic shift mu


def _check_prompt_options(layout: Layout, family: Family, negative_prompt, guidance_scale) -> None:
    """What a family refuses before any weights load: Flux takes no negative prompt, and no guidance without its embedding."""
    if not family.packed:
        return
    if negative_prompt is not None:
        raise ConfigError(
            f"--negative-prompt: {layout.pipeline_class} is guided through its guidance embedding "
            "(--guidance-scale), not by a negative prompt; drop --negative-prompt"
        )
    config_path = layout.root / family.network / "config.json"
    embeds = read_json(config_path).get("guidance_embeds", False) if config_path.is_file() else False
    if guidance_scale is not None and not embeds:
        raise ConfigError(
            f"--guidance-scale: this {layout.pipeline_class}'s transformer has no guidance embedding "
            "(a guidance-distilled model such as Flux schnell); drop --guidance-scale"
        )


def _size(option: str, value: int | None, default: int, multiple: int, why: str) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value <= 0 or value % multiple:
        raise ConfigError(f"{option}: {value!r} is not allowed; it must be a positive multiple of {multiple} ({why})")
    return value


def _pipeline(cls, layout: Layout, components: dict):
    """The pipeline class built from loaded components (listed-but-empty ones as None)."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {name: value for name, value in layout.settings.items() if name in params}
    for name, param in params.items():
        if name in components:
            kwargs[name] = components[name]
        elif name != "self" and name not in kwargs and param.default is inspect.Parameter.empty:
            kwargs[name] = None
    with quiet_loading():
        return cls(**kwargs)


def load_family_parts(
    diffusers, layout: Layout, scheduler_config: dict | None, device: torch.device, dtype: torch.dtype, *,
    prompt, negative_prompt, guidance_scale, height, width, notes: list[str],
) -> FamilyParts:
    """Load a family pipeline's components, encode its prompts, and size its latents (see the module docstring)."""
    family = FAMILIES[layout.family]
    import_library("transformers", f"the text encoders of {layout.pipeline_class}")
    with quiet_loading():  # importing a pipeline class imports transformers' image processors, which warn
        pipeline_class = getattr(diffusers, layout.pipeline_class, None)
    if pipeline_class is None:
        raise ConfigError(f"{layout.label}: diffusers {diffusers.__version__} has no {layout.pipeline_class}; upgrade diffusers")
    _check_prompt_options(layout, family, negative_prompt, guidance_scale)
    defaults = family.call_defaults(pipeline_class)
    components = load_components(layout, device, dtype)
    pipe = _pipeline(pipeline_class, layout, components)
    network, decoder = components[family.network], components["vae"]
    factor, patch = int(pipe.vae_scale_factor), family.patch(network)
    default_size = int(getattr(pipe, "default_sample_size", None) or network.config.sample_size) * factor
    why = f"the VAE's scale factor {factor} times {patch} latent pixels per token"
    pixel_h = _size("--height", height, default_size, factor * patch, why)
    pixel_w = _size("--width", width, default_size, factor * patch, why)
    channels = int(network.config.in_channels) // (4 if family.packed else 1)
    latent_h, latent_w = pixel_h // factor, pixel_w // factor
    check_latent_channels(layout, "vae", decoder, channels)
    scale = float(defaults.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale)
    guiding = not family.packed and scale > 1.0
    if prompt is None:
        notes.append("no prompt given: the empty prompt")
    prompts = Prompts(prompt or "", negative_prompt, guiding, defaults)
    with torch.no_grad(), quiet_loading():
        conditioning = family.encode(pipe, prompts, device, (pixel_h, pixel_w))
    options = {}
    if family.dynamic_shift and scheduler_config and scheduler_config.get("use_dynamic_shifting"):
        tokens = (latent_h // patch) * (latent_w // patch)
        options["flow_mu"] = flow_mu(scheduler_config, tokens)
    return FamilyParts(network, decoder, factor, (channels, latent_h, latent_w), conditioning, scale, options)


__all__ = ["FamilyParts", "load_family_parts"]
