"""Tiny random-weight text-to-image pipelines (SD3, Flux, Sana, SDXL, PixArt-Sigma) saved to folders, offline.

Each builder seeds torch, builds the smallest components that keep the structure of the real
checkpoint (a two-level VAE, so a VAE scale factor of 2; one-layer denoisers; one- or two-layer
text encoders; the scheduler config each model ships with) and writes the assembled diffusers
pipeline with ``save_pretrained`` (safetensors). Nothing is downloaded:

* CLIP tokenizers come from the tiny byte-level BPE vocabulary of ``tiny_diffusers``;
* T5 and Gemma tokenizers are tiny ``tokenizers`` objects (a Unigram model for T5, a BPE model
  with byte fallback for Gemma, laid out as those tokenizer classes lay out their own backends)
  wrapped in ``T5TokenizerFast`` / ``GemmaTokenizerFast`` through ``tokenizer_object=``, so
  ``save_pretrained`` + ``from_pretrained`` give the same token ids.

Every pipeline is meant to be called at 32 x 32 pixels (16 x 16 latents); see each builder's
docstring for the call arguments it needs. Each folder builds in well under a second and runs two
steps on the CPU in a fraction of a second.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tiny_diffusers import _WORDS, TINY_AUTOENCODER, make_tokenizer_folder

# Image side every tiny pipeline is built for: two-level VAEs (scale factor 2) give 16 x 16 latents.
IMAGE_SIZE = 32
LATENT_SIZE = IMAGE_SIZE // 2

# Widths of the tiny text encoders. The CLIP encoders are narrower than T5 so that SD3's zero
# padding of the concatenated CLIP states up to the T5 width is a real (positive) padding.
CLIP_WIDTH = 8
T5_WIDTH = 32
GEMMA_WIDTH = 8
T5_MAX_LENGTH = 512
GEMMA_MAX_LENGTH = 2048

# Scheduler configs as the released checkpoints ship them (the keys that shape the schedule).
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SANA_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
}
SDXL_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
}
PIXART_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}

# What a test calls each pipeline with, besides prompt / steps / generator / output_type.
# Flux and Sana do not default to the transformer's size (Flux assumes 128 latents, Sana 1024
# pixels); PixArt and Sana map sizes to their aspect-ratio bins unless told not to.
CALL_OPTIONS = {
    "sd3": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "flux": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "sana": {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "use_resolution_binning": False},
    "sdxl": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "pixart": {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "use_resolution_binning": False},
}

# ----------------------------------------------------------------------------- tokenizers


def make_clip_tokenizer():
    """The tiny CLIP tokenizer of ``tiny_diffusers`` (16-token prompts), loaded from a scratch folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        return CLIPTokenizer.from_pretrained(make_tokenizer_folder(Path(scratch) / "clip"))


def make_t5_tokenizer(model_max_length: int = T5_MAX_LENGTH):
    """A T5TokenizerFast over a tiny Unigram vocabulary: <pad>=0, </s>=1, <unk>=2, "▁", the words, the letters.

    The backend is laid out as T5's own (a Metaspace pre-tokenizer, no sentinel tokens), so that
    ``from_pretrained`` on its saved folder, which rebuilds the backend from the vocabulary,
    tokenizes the same way.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -1.0) for word in _WORDS] + [(char, -3.0) for char in letters]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=model_max_length,
    )


def make_gemma_tokenizer(model_max_length: int = GEMMA_MAX_LENGTH):
    """A GemmaTokenizerFast over a tiny BPE vocabulary: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4, "▁", ...

    Like Gemma's own backend: spaces become "▁" (no prefix space), byte fallback (here to <unk>,
    as the byte tokens are left out) and a post-processor that starts each sequence with <bos>.
    The merges spell out the words, both at the start of a prompt ("cat") and after a space ("▁cat").
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import GemmaTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for code in range(ord("a"), ord("z") + 1):
        vocab[chr(code)] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        for piece, rest in (("\u2581", word), (word[0], word[1:])):
            for char in rest:
                if (piece, char) not in merges:
                    merges.append((piece, char))
                piece = piece + char
                vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token="<unk>", byte_fallback=True)
    )
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return GemmaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )


# ----------------------------------------------------------------------------- text encoders


def _clip_config(tokenizer, hidden_size: int = CLIP_WIDTH, projection_dim: int = CLIP_WIDTH, layers: int = 2):
    from transformers import CLIPTextConfig

    # Two layers, so that the penultimate hidden state the SD pipelines read is a real layer's output.
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_clip_text_model(tokenizer, with_projection: bool = False, seed: int = 0, **config):
    """CLIPTextModel (pooled output = final hidden state at the EOS token) or CLIPTextModelWithProjection."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(_clip_config(tokenizer, **config)).eval()


def make_t5_encoder(tokenizer, d_model: int = T5_WIDTH, seed: int = 0):
    """A one-layer T5EncoderModel with T5 v1.1's gated-GELU feed-forward."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 2,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def make_gemma2_encoder(tokenizer, hidden_size: int = GEMMA_WIDTH, seed: int = 0):
    """A one-layer Gemma2Model (Sana's text encoder is the bare Gemma2 decoder stack)."""
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
    )
    return Gemma2Model(config).eval()


# ----------------------------------------------------------------------------- autoencoders


def make_autoencoder_kl(latent_channels: int = 4, seed: int = 0, **config):
    """The two-level AutoencoderKL of ``tiny_diffusers`` (scale factor 2), with the given latent width and config."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_AUTOENCODER, latent_channels=latent_channels, sample_size=IMAGE_SIZE, **config).eval()


def make_autoencoder_dc(latent_channels: int = 4, seed: int = 0):
    """A two-level AutoencoderDC (scale factor 2): a ResBlock level and an EfficientViT (linear attention) level,
    pixel-unshuffle downsampling, interpolating upsampling and the DC-AE f32c32 scaling factor, as Sana's DC-AE."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    return AutoencoderDC(
        in_channels=3,
        latent_channels=latent_channels,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        upsample_block_type="interpolate",
        downsample_block_type="pixel_unshuffle",
        decoder_norm_types=("batch_norm", "rms_norm"),
        decoder_act_fns=("relu", "silu"),
        scaling_factor=0.41407,
    ).eval()


# ----------------------------------------------------------------------------- pipelines


def make_sd3_pipeline_folder(path, seed: int = 0, sample_size: int = LATENT_SIZE, **scheduler_options) -> Path:
    """A tiny StableDiffusion3Pipeline folder; call it at height = width = 32 (its default).

    The default size is ``transformer.sample_size * vae_scale_factor`` = 16 * 2 = 32 pixels: 4 x 16 x 16
    latents, patch size 2 as SD3 (8 x 8 = 64 image tokens; sizes must be multiples of 2 * 2 = 4).
    Text: two CLIPTextModelWithProjection (width 8 each, pooled 8 + 8 = 16 = pooled_projection_dim) and
    a T5 encoder of width 32 = joint_attention_dim; the CLIP states are zero-padded from 16 to 32 and
    put before the T5 states (16 + 256 tokens at the default max_sequence_length). The VAE has SD3's
    scaling_factor 1.5305 and shift_factor 0.0609 and no quant convs; the scheduler is
    FlowMatchEulerDiscreteScheduler(shift=3.0) (``scheduler_options`` override its config).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    path = Path(path)
    tokenizer, tokenizer_2, tokenizer_3 = make_clip_tokenizer(), make_clip_tokenizer(), make_t5_tokenizer()
    text_encoder = make_clip_text_model(tokenizer, with_projection=True, seed=seed)
    text_encoder_2 = make_clip_text_model(tokenizer_2, with_projection=True, seed=seed + 1)
    text_encoder_3 = make_t5_encoder(tokenizer_3, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_WIDTH,
        pos_embed_max_size=sample_size,
    ).eval()
    vae = make_autoencoder_kl(
        4, seed=seed, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**{**SD3_SCHEDULER, **scheduler_options})
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    ).save_pretrained(path)
    return path


def make_flux_pipeline_folder(path, seed: int = 0, guidance_embeds: bool = True, **scheduler_options) -> Path:
    """A tiny FluxPipeline folder; call it with height = width = 32 (Flux's own default is 128 * 2 = 256).

    At 32 pixels the two-level VAE gives 4 x 16 x 16 latents, packed in 2 x 2 patches into 8 x 8 = 64
    tokens of 4 * 4 = 16 channels = the transformer's in_channels (sizes must be multiples of
    vae_scale_factor * 2 = 4). ``guidance_embeds=True`` is Flux-dev (the guidance scale is an input of
    the network); False is Flux-schnell-like. Text: a CLIPTextModel (pooled width 8 =
    pooled_projection_dim) and a T5 encoder of width 32 = joint_attention_dim (512 tokens by
    default). The VAE has Flux's scaling_factor 0.3611 and shift_factor 0.1159 and no quant convs;
    the scheduler is Flux-dev's FlowMatchEulerDiscreteScheduler (dynamic shifting, base/max shift
    0.5/1.15 over 256..4096 tokens; ``scheduler_options`` override it).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    path = Path(path)
    tokenizer, tokenizer_2 = make_clip_tokenizer(), make_t5_tokenizer()
    text_encoder = make_clip_text_model(tokenizer, seed=seed)
    text_encoder_2 = make_t5_encoder(tokenizer_2, seed=seed + 1)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    vae = make_autoencoder_kl(
        4, seed=seed, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**{**FLUX_SCHEDULER, **scheduler_options})
    FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    ).save_pretrained(path)
    return path


def make_sana_pipeline_folder(path, seed: int = 0, sample_size: int = LATENT_SIZE, **scheduler_options) -> Path:
    """A tiny SanaPipeline folder; call it with height = width = 32 and ``use_resolution_binning=False``.

    Sana checks that sizes are multiples of 32 (whatever the VAE) and defaults to 1024 pixels;
    32 pixels through the two-level AutoencoderDC give 4 x 16 x 16 latents, patch size 1 as Sana
    (256 tokens; its attention is linear). With binning on, sample_size 16 would pick the 512-pixel
    aspect-ratio bins. Text: a one-layer Gemma2Model of width 8 = caption_channels; the default
    complex-human-instruction preamble makes prompts a few hundred tokens. The scheduler is
    Sana's DPMSolverMultistepScheduler (flow sigmas, flow_shift 3.0, flow prediction;
    ``scheduler_options`` override it).
    """
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    path = Path(path)
    tokenizer = make_gemma_tokenizer()
    text_encoder = make_gemma2_encoder(tokenizer, seed=seed + 1)
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=GEMMA_WIDTH,
        sample_size=sample_size,
    ).eval()
    vae = make_autoencoder_dc(4, seed=seed)
    scheduler = DPMSolverMultistepScheduler(**{**SANA_SCHEDULER, **scheduler_options})
    SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(path)
    return path


def make_sdxl_pipeline_folder(path, seed: int = 0, sample_size: int = LATENT_SIZE, **scheduler_options) -> Path:
    """A tiny StableDiffusionXLPipeline folder; call it at height = width = 32 (its default).

    The default size is ``unet.sample_size * vae_scale_factor`` = 16 * 2 = 32 pixels (4 x 16 x 16
    latents; sizes must be multiples of 8). The UNet has SDXL's layout in two levels (no attention
    at the first level, linear projections) and its "text_time" added embedding: 6 time ids
    (original size, crop, target size) of 4 sinusoidal channels each plus text_encoder_2's pooled
    projection (8) = 32 inputs. Text: a CLIPTextModel and a CLIPTextModelWithProjection of width 8,
    concatenated to 16 = cross_attention_dim. The scheduler is SDXL's EulerDiscreteScheduler
    (scaled_linear 0.00085..0.012, epsilon, leading spacing, steps_offset 1; ``scheduler_options``
    override it); the VAE has SDXL's scaling_factor 0.13025.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    path = Path(path)
    tokenizer, tokenizer_2 = make_clip_tokenizer(), make_clip_tokenizer()
    text_encoder = make_clip_text_model(tokenizer, seed=seed)
    text_encoder_2 = make_clip_text_model(tokenizer_2, with_projection=True, seed=seed + 1)
    addition_time_embed_dim = 4
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * CLIP_WIDTH,
        attention_head_dim=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + CLIP_WIDTH,
    ).eval()
    vae = make_autoencoder_kl(4, seed=seed, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(**{**SDXL_SCHEDULER, **scheduler_options})
    StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    ).save_pretrained(path)
    return path


def make_pixart_pipeline_folder(
    path, seed: int = 0, sample_size: int = LATENT_SIZE, learned_sigma: bool = True, **scheduler_options
) -> Path:
    """A tiny PixArtSigmaPipeline folder; call it at height = width = 32 with ``use_resolution_binning=False``.

    The default size is ``transformer.sample_size * vae_scale_factor`` = 16 * 2 = 32 pixels: 4 x 16 x 16
    latents, patch size 2 as PixArt (64 tokens). PixArt only bins sample sizes 32/64/128/256, so
    binning must be off. ``learned_sigma`` gives out_channels = 2 * 4 = 8 as Sigma (the pipeline
    keeps the first half). Text: a T5 encoder of width 32 = caption_channels (300 tokens by default);
    no micro-conditions (use_additional_conditions=False, as Sigma). The scheduler is PixArt's
    DPMSolverMultistepScheduler (linear betas 0.0001..0.02, epsilon; ``scheduler_options`` override
    it); the VAE has SDXL's scaling_factor 0.13025, as PixArt-Sigma's.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    path = Path(path)
    tokenizer = make_t5_tokenizer()
    text_encoder = make_t5_encoder(tokenizer, seed=seed + 1)
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        out_channels=8 if learned_sigma else 4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        cross_attention_dim=16,
        caption_channels=T5_WIDTH,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    ).eval()
    vae = make_autoencoder_kl(4, seed=seed, scaling_factor=0.13025)
    scheduler = DPMSolverMultistepScheduler(**{**PIXART_SCHEDULER, **scheduler_options})
    PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(path)
    return path


def edited_copy(folder, dest, *, drop: tuple[str, ...] = (), **index) -> Path:
    """A copy of a pipeline folder without the component folders ``drop`` and with ``index`` written
    over its model_index.json (``_class_name="OtherPipeline"``, ``scheduler=[None, None]``)."""
    import json
    import shutil

    dest = Path(dest)
    shutil.copytree(folder, dest)
    for name in drop:
        shutil.rmtree(dest / name)
    path = dest / "model_index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **index}))
    return dest


# kind -> (builder, diffusers pipeline class name)
PIPELINES = {
    "sd3": (make_sd3_pipeline_folder, "StableDiffusion3Pipeline"),
    "flux": (make_flux_pipeline_folder, "FluxPipeline"),
    "sana": (make_sana_pipeline_folder, "SanaPipeline"),
    "sdxl": (make_sdxl_pipeline_folder, "StableDiffusionXLPipeline"),
    "pixart": (make_pixart_pipeline_folder, "PixArtSigmaPipeline"),
}
