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
from ..vocabulary import config_process
from .hf_families import FAMILIES, Conditioning, Family, Prompts, flow_mu
from .hf_loading import (
    Layout, check_latent_channels, check_size, check_unet, import_library, load_components, quiet_loading, read_json, vae_scale_factor,
)


@dataclass
class FamilyParts:
    """What a family pipeline contributes to a :class:`~dpmcli.models.hf.DiffusersModel`."""

    network: object
    decoder: object
    vae_scale_factor: int
    sample_shape: tuple[int, int, int]
    conditioning: Conditioning
    guidance_scale: float | None  # None: not guided (a Flux without a guidance embedding)
    schedule_options: dict  # what the image size decides: Flux's and SD3's dynamic shift mu


def _check_prompt_options(layout: Layout, family: Family, negative_prompt, guidance_scale) -> bool:
    """What a family refuses before any weights load: Flux takes no negative prompt, and no guidance without its
    embedding. Returns whether the network takes the guidance scale as an input."""
    if not family.packed:
        return False
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
    return bool(embeds)


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


def _component_config(layout: Layout, name: str) -> dict:
    path = layout.root / name / "config.json"
    return read_json(path) if path.is_file() else {}


def _schedule_checks(layout: Layout, family: Family, scheduler_config: dict | None, notes: list[str]) -> dict:
    """The schedule options a family adds: its process where the folder has no scheduler config; refusals where
    the config contradicts the family (a VP schedule for a flow model) or asks for a shift it cannot compute."""
    if scheduler_config is None:
        if family.process != "flow":
            return {}
        notes.append(f"{layout.pipeline_class} is a flow-matching model: sampled as --process flow, flow_prediction")
        return {"process": "flow", "prediction_type": "flow_prediction"}
    found = config_process(scheduler_config)
    if found != family.process:
        raise ConfigError(
            f"{layout.label}: {layout.pipeline_class} is a {family.process} model but its scheduler config describes a "
            f"{found} schedule; save the pipeline with the scheduler it was trained with"
        )
    if scheduler_config.get("use_dynamic_shifting") and not family.dynamic_shift:
        raise ConfigError(
            f"{layout.label}: the scheduler config asks for a dynamic shift, which {layout.pipeline_class} does not compute; "
            "set use_dynamic_shifting to false or give --flow-shift"
        )
    return {}


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
    embeds_guidance = _check_prompt_options(layout, family, negative_prompt, guidance_scale)
    options = _schedule_checks(layout, family, scheduler_config, notes)
    defaults = family.call_defaults(pipeline_class)
    # sizes are checked from the config files, before any weights load
    factor, patch = vae_scale_factor(_component_config(layout, "vae")), family.patch(_component_config(layout, family.network))
    why = f"the VAE's scale factor {factor} times {patch} latent pixels per token"
    check_size("--height", height, factor * patch, why)
    check_size("--width", width, factor * patch, why)
    components = load_components(layout, device, dtype)
    pipe = _pipeline(pipeline_class, layout, components)
    network, decoder = components[family.network], components["vae"]
    if family.network == "unet":
        check_unet(network, layout.label, allow=("addition_embed_type",))
    default_size = defaults.get("height") or int(getattr(pipe, "default_sample_size", None) or network.config.sample_size) * factor
    pixel_h, pixel_w = height or int(default_size), width or int(defaults.get("width") or default_size)
    channels = int(network.config.in_channels) // (4 if family.packed else 1)
    latent_h, latent_w = pixel_h // factor, pixel_w // factor
    check_latent_channels(layout, "vae", decoder, channels)
    scale = float(defaults.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale)
    guiding = not family.packed and scale > 1.0
    _prompt_notes(prompt, negative_prompt, guiding or family.packed, notes)
    with torch.no_grad(), quiet_loading():
        conditioning = family.encode(pipe, Prompts(prompt or "", negative_prompt, guiding, defaults), device, (pixel_h, pixel_w))
    del pipe, components  # the text encoders go with them: sampling keeps the network and the VAE
    if family.dynamic_shift and scheduler_config and scheduler_config.get("use_dynamic_shifting"):
        options["flow_mu"] = flow_mu(scheduler_config, (latent_h // patch) * (latent_w // patch))
    scale_kept = None if family.packed and not embeds_guidance else scale
    return FamilyParts(network, decoder, factor, (channels, latent_h, latent_w), conditioning, scale_kept, options)


def _prompt_notes(prompt, negative_prompt, guided: bool, notes: list[str]) -> None:
    if prompt is None:
        notes.append("no prompt given: the empty prompt")
    if negative_prompt is not None and not guided:
        notes.append("guidance scale <= 1: the conditional prediction alone, the negative prompt is unused (as in diffusers)")


__all__ = ["FamilyParts", "load_family_parts"]
