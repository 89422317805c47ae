"""Tiny random-weight diffusers models saved to folders, for offline tests.

Each builder seeds torch, builds the smallest components that still exercise the real code
paths (attention blocks, cross-attention, a two-level VAE, a one-layer CLIP text encoder) and
writes them with ``save_pretrained``. Nothing is downloaded; each folder takes a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Scheduler configs as diffusers' own pipelines ship them (the keys that shape the schedule).
SCHEDULER_CLASSES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
PIPELINE_CLASSES = {"ddpm": "DDPMPipeline", "ddim": "DDIMPipeline", "dpmsolver": "DDIMPipeline", "pndm": "DDIMPipeline"}


def make_unet(sample_size: int = 8, channels: int = 3, out_channels: int | None = None, seed: int = 0):
    """A UNet2DModel with two resolution levels, one attention block and four-channel norm groups."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def make_unet_folder(path, sample_size: int = 8, channels: int = 3, out_channels: int | None = None, seed: int = 0) -> Path:
    """A bare UNet2DModel folder (config.json + weights), no scheduler config."""
    path = Path(path)
    make_unet(sample_size, channels, out_channels, seed).save_pretrained(path)
    return path


def make_scheduler(kind: str = "ddpm", prediction_type: str = "epsilon", **overrides):
    import diffusers

    options = {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "prediction_type": prediction_type,
    }
    options.update(overrides)
    return getattr(diffusers, SCHEDULER_CLASSES[kind])(**options)


def make_ddpm_pipeline_folder(
    path,
    scheduler: str = "ddpm",
    prediction_type: str = "epsilon",
    sample_size: int = 8,
    seed: int = 0,
    **scheduler_options,
) -> Path:
    """An unconditional pipeline folder (DDPMPipeline for ``ddpm``, else DDIMPipeline) with a tiny UNet2DModel.

    ``scheduler`` picks the scheduler class saved with it (ddpm, ddim, dpmsolver, pndm);
    ``scheduler_options`` override its config (e.g. ``timestep_spacing="trailing"``).
    """
    import diffusers

    path = Path(path)
    unet = make_unet(sample_size=sample_size, seed=seed)
    sched = make_scheduler(scheduler, prediction_type, **scheduler_options)
    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[scheduler])
    pipeline_class(unet=unet, scheduler=sched).save_pretrained(path)
    return path


# The image-space autoencoders (VQ and KL): RGB, two resolution levels, one block each.
TINY_AUTOENCODER = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
}


def make_ldm_pipeline_folder(path, sample_size: int = 8, seed: int = 0) -> Path:
    """An unconditional latent-diffusion folder (LDMPipeline): a UNet2DModel on 3 x 8 x 8 latents and a VQModel."""
    from diffusers import LDMPipeline, VQModel

    path = Path(path)
    unet = make_unet(sample_size=sample_size, seed=seed)
    torch.manual_seed(seed)
    vqvae = VQModel(**TINY_AUTOENCODER, latent_channels=3, num_vq_embeddings=16, sample_size=sample_size * 2).eval()
    sched = make_scheduler("ddim", beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=sched).save_pretrained(path)
    return path


# A hand-written byte-level BPE vocabulary: the letters, their word-final forms and a few words.
_WORDS = ("cat", "dog", "red", "blue", "photo", "of", "a", "an", "the", "house", "tree")


def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    merges: list[str] = []
    for word in _WORDS:
        # merge left to right: "c a" -> "ca", "ca t</w>" -> "cat</w>"
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if i == len(word) - 1 else "")
            rule = f"{piece} {right}"
            piece = piece + right
            if rule not in merges:
                merges.append(rule)
            if piece not in tokens:
                tokens.append(piece)
    return {token: i for i, token in enumerate(tokens)}, merges


def make_tokenizer_folder(path, max_length: int = 16) -> Path:
    """vocab.json, merges.txt and tokenizer_config.json of a tiny CLIP tokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"})
    )
    return path


def make_sd_pipeline_folder(
    path,
    scheduler: str = "pndm",
    prediction_type: str = "epsilon",
    sample_size: int = 8,
    seed: int = 0,
    **scheduler_options,
) -> Path:
    """A tiny StableDiffusionPipeline folder (latents 4 x 8 x 8, images 3 x 16 x 16, prompts of 16 tokens).

    The scheduler config follows Stable Diffusion's: scaled_linear betas 0.00085..0.012,
    leading spacing with steps_offset 1 (``scheduler_options`` override it).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    vae = AutoencoderKL(**TINY_AUTOENCODER, latent_channels=4, sample_size=sample_size * 2).eval()
    tokenizer_dir = make_tokenizer_folder(path / "_tokenizer_source")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            projection_dim=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    options = {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": prediction_type,
        "steps_offset": 1,
    }
    if scheduler != "dpmsolver":
        options["timestep_spacing"] = "leading"
    if scheduler in ("ddpm", "ddim"):
        options["clip_sample"] = False
    if scheduler == "pndm":
        options["skip_prk_steps"] = True
    options.update(scheduler_options)
    import diffusers

    sched = getattr(diffusers, SCHEDULER_CLASSES[scheduler])(**options)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    for leftover in sorted(tokenizer_dir.iterdir()):
        leftover.unlink()
    tokenizer_dir.rmdir()
    return path
