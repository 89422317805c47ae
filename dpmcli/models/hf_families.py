"""Pipelines past Stable Diffusion 1.x/2.x: how each family conditions and calls its network.

SDXL and PixArt-Sigma (discrete VP), SD3, Flux and Sana (flow matching) each put text into
their network differently: two or three text encoders, pooled projections, SDXL's size ids,
attention masks, Flux's guidance embedding and packed 2x2 latent patches. A :class:`Family`
holds what differs -- which component is the network, how prompts become the network's keyword
tensors (the pipeline's own ``encode_prompt``, with the defaults of its ``__call__``) and how one
call is made -- so that :class:`dpmcli.models.hf.DiffusersModel` runs all of them the same way:
latents in dpmcli's (batch, channels, height, width) layout, the prediction back in it.

diffusers is imported only by the loader (:mod:`dpmcli.models.hf`), never here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

# components a sampler never needs, whatever the pipeline lists
NEVER_LOADED = ("safety_checker", "feature_extractor", "image_encoder")


@dataclass
class Conditioning:
    """The network's keyword tensors for the prompt (``cond``) and the negative prompt (``uncond``,
    None when unguided), each with a batch of one, and the ones without a batch dimension (``fixed``)."""

    cond: dict = field(default_factory=dict)
    uncond: dict | None = None
    fixed: dict = field(default_factory=dict)

    def for_batch(self, batch: int, guiding: bool) -> dict:
        """The keyword tensors for ``batch`` latents, negative prompt's first when guiding (as pipelines stack them)."""
        out = dict(self.fixed)
        for name, value in self.cond.items():
            value = value.expand(batch, *value.shape[1:])
            if guiding:
                value = torch.cat([self.uncond[name].expand(batch, *value.shape[1:]), value])
            out[name] = value.contiguous()
        return out


@dataclass(frozen=True)
class Family:
    """What a pipeline class does differently from the others (see the module docstring)."""

    pipeline: str
    network: str  # the component that predicts: "unet" or "transformer"
    needs: tuple[str, ...]  # components that must be present
    encode: Callable  # (pipe, prompts: Prompts, device, size) -> Conditioning
    forward: Callable  # (network, x, timesteps, keywords, guidance scale) -> prediction
    process: str  # the process its scheduler describes: "vp" or "flow"
    packed: bool = False  # Flux: 2x2 latent patches are the tokens, and guidance is an input of the network
    dynamic_shift: bool = False  # computes the flow shift mu from the image's token count when the scheduler asks

    def patch(self, network_config: dict) -> int:
        """Latent pixels per token side: the network's patch size (from its config), times 2 where latents are packed."""
        return (2 if self.packed else 1) * int(network_config.get("patch_size") or 1)

    def call_defaults(self, pipeline_class) -> dict:
        """The defaults of the pipeline's ``__call__``: guidance scale, sequence length, prompt templates."""
        return {
            name: p.default
            for name, p in inspect.signature(pipeline_class.__call__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }


@dataclass(frozen=True)
class Prompts:
    prompt: str
    negative_prompt: str | None  # None: the pipeline's own default (empty, or zeros where it forces them)
    guiding: bool
    defaults: dict  # the pipeline's __call__ defaults


def _encode_kwargs(pipe, prompts: Prompts, device) -> dict:
    """Keyword arguments of ``pipe.encode_prompt``: the prompts, and every other argument its ``__call__`` also takes, at that default."""
    params = inspect.signature(pipe.encode_prompt).parameters
    given = {"prompt": prompts.prompt, "device": device, "num_images_per_prompt": 1}
    if "do_classifier_free_guidance" in params:
        given["do_classifier_free_guidance"] = prompts.guiding
    if prompts.negative_prompt is not None and "negative_prompt" in params:
        given["negative_prompt"] = prompts.negative_prompt
    for name in params:
        precomputed = "embeds" in name or "attention_mask" in name
        if name not in given and not precomputed and name in prompts.defaults:
            given[name] = prompts.defaults[name]
    return given


# --------------------------------------------------------------------------- per family


def _encode_pooled(pipe, prompts: Prompts, device, names: tuple[str, str]) -> Conditioning:
    """Hidden states and pooled embeddings of the prompt and the negative prompt, under the network's ``names``."""
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(**_encode_kwargs(pipe, prompts, device))
    uncond = dict(zip(names, (negative, negative_pooled))) if prompts.guiding else None
    return Conditioning(dict(zip(names, (embeds, pooled))), uncond)


def _encode_sd3(pipe, prompts: Prompts, device, size) -> Conditioning:
    return _encode_pooled(pipe, prompts, device, ("encoder_hidden_states", "pooled_projections"))


def _encode_sdxl(pipe, prompts: Prompts, device, size) -> Conditioning:
    """SDXL's two text encoders, and its size conditioning: original size, crop corner (0, 0), target size."""
    conditioning = _encode_pooled(pipe, prompts, device, ("encoder_hidden_states", "text_embeds"))
    height, width = size
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=conditioning.cond["text_embeds"].dtype, device=device)
    for keywords in (conditioning.cond, conditioning.uncond):
        if keywords is not None:
            keywords["time_ids"] = time_ids
    return conditioning


def _encode_masked(pipe, prompts: Prompts, device, size) -> Conditioning:
    """PixArt and Sana: one text encoder's hidden states with their attention mask."""
    embeds, mask, negative, negative_mask = pipe.encode_prompt(**_encode_kwargs(pipe, prompts, device))
    cond = {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
    uncond = {"encoder_hidden_states": negative, "encoder_attention_mask": negative_mask} if prompts.guiding else None
    return Conditioning(cond, uncond)


def _encode_flux(pipe, prompts: Prompts, device, size) -> Conditioning:
    """Flux: T5 hidden states, CLIP's pooled embedding and the text position ids; guidance is embedded, not two calls."""
    embeds, pooled, text_ids = pipe.encode_prompt(**_encode_kwargs(pipe, prompts, device))
    return Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled}, None, {"txt_ids": text_ids})


def _forward_sdxl(unet, x, t, keywords: dict, scale):
    added = {"text_embeds": keywords["text_embeds"], "time_ids": keywords["time_ids"]}
    return unet(x, t, encoder_hidden_states=keywords["encoder_hidden_states"], added_cond_kwargs=added, return_dict=False)[0]


def _forward_pixart(transformer, x, t, keywords: dict, scale):
    return transformer(x, timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False, **keywords)[0]


def _forward_sana(transformer, x, t, keywords: dict, scale):
    t = t * getattr(transformer.config, "timestep_scale", 1.0)
    return transformer(x, timestep=t, return_dict=False, **keywords)[0]


def _forward_sd3(transformer, x, t, keywords: dict, scale):
    return transformer(hidden_states=x, timestep=t, return_dict=False, **keywords)[0]


def pack_patches(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as Flux's tokens: (B, H/2 * W/2, 4C), each token a 2x2 patch, channel-major."""
    batch, channels, height, width = x.shape
    patches = x.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_patches(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_patches` for latents of ``height`` x ``width``."""
    batch, _, features = tokens.shape
    patches = tokens.reshape(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def patch_positions(rows: int, columns: int, device, dtype) -> torch.Tensor:
    """Flux's image position ids: (rows * columns, 3), zeros then each token's row and column."""
    ids = torch.zeros(rows, columns, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(columns, device=device, dtype=dtype)[None, :]
    return ids.reshape(rows * columns, 3)


def _forward_flux(transformer, x, t, keywords: dict, scale):
    batch, _, height, width = x.shape
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((batch,), float(scale), device=x.device, dtype=torch.float32)
    image_ids = patch_positions(height // 2, width // 2, x.device, x.dtype)
    out = transformer(
        hidden_states=pack_patches(x), timestep=t.to(x.dtype) / 1000, guidance=guidance, img_ids=image_ids,
        return_dict=False, **keywords,
    )[0]
    return unpack_patches(out, height, width)


FAMILIES = {
    family.pipeline: family
    for family in (
        Family("StableDiffusionXLPipeline", "unet", ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
               _encode_sdxl, _forward_sdxl, "vp"),
        Family("PixArtSigmaPipeline", "transformer", ("transformer", "vae", "text_encoder", "tokenizer"),
               _encode_masked, _forward_pixart, "vp"),
        Family("StableDiffusion3Pipeline", "transformer",
               ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
               _encode_sd3, _forward_sd3, "flow", dynamic_shift=True),
        Family("FluxPipeline", "transformer", ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
               _encode_flux, _forward_flux, "flow", packed=True, dynamic_shift=True),
        Family("SanaPipeline", "transformer", ("transformer", "vae", "text_encoder", "tokenizer"),
               _encode_masked, _forward_sana, "flow"),
    )
}


def flow_mu(config: dict, tokens: int) -> float:
    """The dynamic shift mu for an image of ``tokens`` tokens: linear in the token count between the scheduler
    config's (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), as Flux and SD3 compute it."""
    base_len, max_len = int(config.get("base_image_seq_len", 256)), int(config.get("max_image_seq_len", 4096))
    base_shift, max_shift = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
    return base_shift + (max_shift - base_shift) * (tokens - base_len) / (max_len - base_len)


__all__ = ["FAMILIES", "NEVER_LOADED", "Conditioning", "Family", "Prompts", "flow_mu", "pack_patches", "patch_positions", "unpack_patches"]
