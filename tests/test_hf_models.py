"""diffusers models as dpmcli models (``--model diffusers:PATH``), offline, on tiny random-weight networks.

* the schedule read from scheduler configs matches the betas diffusers builds from them;
* every folder kind loads, runs at integer and fractional timesteps, and makes images;
* classifier-free guidance is u + s (c - u) of the two single-prompt predictions (1e-5);
* with --compat diffusers, dpmcli's loop over the loaded model equals diffusers'
  DPMSolverMultistepScheduler driving the same UNet (a hand loop, and StableDiffusionPipeline
  itself for the text pipeline) from the same x_T, within 1e-4 relative to max|x|;
* errors are one-line ConfigErrors that say what to do.
"""

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers
from diffusers import DPMSolverMultistepScheduler
from tiny_diffusers import (
    make_ddpm_pipeline_folder,
    make_ldm_pipeline_folder,
    make_scheduler,
    make_sd_pipeline_folder,
    make_unet,
    make_unet_folder,
)

from dpmcli.config import SolverConfig
from dpmcli.errors import ConfigError
from dpmcli.models.hf import (
    DiffusersModel,
    download_ignore_patterns,
    load_diffusers_model,
    schedule_options_from_scheduler_config,
)
from dpmcli.plan import build_plan
from dpmcli.sampler import sample
from dpmcli.schedule import Schedule

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-diffusers")
    return {
        "unet": make_unet_folder(root / "unet"),
        "learned": make_unet_folder(root / "learned", out_channels=6),
        "ddpm": make_ddpm_pipeline_folder(root / "ddpm"),
        "ddim-v": make_ddpm_pipeline_folder(
            root / "ddim-v", scheduler="ddim", prediction_type="v_prediction", timestep_spacing="trailing"
        ),
        "dpm-karras": make_ddpm_pipeline_folder(
            root / "dpm-karras", scheduler="dpmsolver", use_karras_sigmas=True, final_sigmas_type="sigma_min"
        ),
        "sd": make_sd_pipeline_folder(root / "sd"),
    }


def load(folder, **kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("dtype", torch.float32)
    return load_diffusers_model(str(folder), **kwargs)


def latents(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *model.sample_shape), generator=g, dtype=model.latent_dtype)


# ----------------------------------------------------------------------------- schedule options


def diffusers_alphas_cumprod(kind, **config):
    return make_scheduler(kind, **config).alphas_cumprod.double().numpy()


def ours_alphas_cumprod(options):
    return Schedule.from_config(SolverConfig(**options).validated()).alphas_cumprod


@pytest.mark.parametrize(
    "kind, config, expected",
    [
        (
            "ddpm",
            {},
            {"train_steps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
             "prediction_type": "epsilon", "spacing": "leading", "steps_offset": 0, "rescale_zero_snr": False,
             "thresholding": False},
        ),
        (
            "ddim",
            {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
            {"prediction_type": "v_prediction", "spacing": "trailing", "rescale_zero_snr": True,
             "beta_schedule": "scaled_linear"},
        ),
        (
            "dpmsolver",
            {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "lambda_min_clipped": -5.1,
             "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
            {"spacing": "karras", "final_sigma": "sigma-min", "lambda_min_clipped": -5.1, "thresholding": True,
             "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        ),
        (
            "dpmsolver",
            {"use_lu_lambdas": True, "beta_schedule": "squaredcos_cap_v2"},
            {"spacing": "logsnr", "final_sigma": "zero", "lambda_min_clipped": -float("inf"),
             "beta_schedule": "squaredcos_cap_v2"},
        ),
        (
            "pndm",
            {"steps_offset": 1, "skip_prk_steps": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012},
            {"spacing": "leading", "steps_offset": 1, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"},
        ),
        (
            "ddpm",
            {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 500},
            {"train_steps": 500},
        ),
    ],
)
def test_schedule_options_from_scheduler_configs(kind, config, expected):
    sched_config = dict(make_scheduler(kind, **config).config)
    options = schedule_options_from_scheduler_config(sched_config)
    for key, value in expected.items():
        assert options[key] == value, (key, options)
    if config.get("beta_schedule") == "sigmoid":
        assert "beta_schedule" not in options and len(options["trained_betas"]) == 500
    # the same betas as the scheduler diffusers builds from that config
    theirs = diffusers_alphas_cumprod(kind, **config)
    ours = ours_alphas_cumprod(options)
    tol = 1e-5 if config.get("rescale_betas_zero_snr") else 1e-6
    np.testing.assert_allclose(ours[:-1], theirs[:-1], rtol=tol, atol=1e-7)


def test_schedule_options_fill_class_defaults_and_trained_betas():
    # a sparse file: the keys it leaves out are its class's defaults, as in diffusers
    assert schedule_options_from_scheduler_config({"_class_name": "DDPMScheduler"})["spacing"] == "leading"
    assert schedule_options_from_scheduler_config({"_class_name": "DPMSolverMultistepScheduler"})["spacing"] == "linspace"
    betas = np.linspace(1e-4, 2e-2, 50).tolist()
    options = schedule_options_from_scheduler_config({"_class_name": "DDIMScheduler", "trained_betas": betas})
    assert options["trained_betas"] == tuple(betas) and "beta_schedule" not in options
    assert SolverConfig(**options).validated().train_steps == 50


@pytest.mark.parametrize(
    "config, message",
    [
        ({"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000}, "describes neither a discrete VP"),
            ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.02}, "sets shift_terminal"),
            ({"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}, "sets invert_sigmas"),
        ({"_class_name": "DDPMScheduler", "beta_schedule": "laplace"}, "beta_schedule 'laplace'"),
        ({"_class_name": "DDPMScheduler", "prediction_type": "flow_prediction"}, "prediction_type 'flow_prediction'"),
        ({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "odd"}, "timestep_spacing 'odd'"),
    ],
)
def test_schedule_options_refuse_what_dpmcli_cannot_follow(config, message):
    with pytest.raises(ConfigError, match=message):
        schedule_options_from_scheduler_config(config)


# ----------------------------------------------------------------------------- loading


def test_bare_unet_folder(folders):
    model = load(folders["unet"])
    assert isinstance(model, DiffusersModel)
    assert model.schedule_options == {} and model.pipeline_scheduler_config is None
    assert model.sample_shape == (3, 8, 8) and model.prediction_type == "epsilon"
    info = model.describe()
    assert info["kind"] == "UNet2DModel" and "no scheduler config" in info["schedule_from"]
    x = latents(model)
    for t in (999, 500, 123.25, 0.5):
        out = model(x, t)
        assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # a fractional timestep is not rounded
    assert not torch.equal(model(x, 500), model(x, 500.5))
    images = model.to_images(x)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1))


def test_unconditional_pipeline_folder(folders):
    model = load(folders["ddpm"])
    assert model.describe()["kind"] == "DDPMPipeline" and model.describe()["scheduler"] == "DDPMScheduler"
    assert model.schedule_options["beta_schedule"] == "linear" and model.schedule_options["spacing"] == "leading"
    assert model.pipeline_scheduler_config["_class_name"] == "DDPMScheduler"
    x = latents(model, batch=3)
    # the same network as diffusers' own pipeline loads
    unet = diffusers.UNet2DModel.from_pretrained(folders["ddpm"], subfolder="unet").eval()
    with torch.no_grad():
        expected = unet(x, torch.tensor(700)).sample
    torch.testing.assert_close(model(x, 700), expected, rtol=0, atol=0)
    # v-prediction and a sigma grid are read from the other scheduler configs
    assert load(folders["ddim-v"]).prediction_type == "v_prediction"
    assert load(folders["dpm-karras"]).schedule_options["spacing"] == "karras"


def test_unconditional_latent_pipeline(tmp_path):
    folder = make_ldm_pipeline_folder(tmp_path / "ldm")
    model = load(folder)
    assert model.describe()["kind"] == "LDMPipeline" and model.describe()["latent"] is True
    assert model.sample_shape == (3, 8, 8) and model.schedule_options["beta_schedule"] == "scaled_linear"
    x = latents(model)
    assert torch.isfinite(model(x, 10)).all()
    vqvae = diffusers.VQModel.from_pretrained(folder, subfolder="vqvae").eval()
    with torch.no_grad():
        expected = (vqvae.decode(x / vqvae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    images = model.to_images(x)
    assert images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images, expected)


def test_learned_variance_unet_keeps_the_prediction_channels(folders):
    model = load(folders["learned"])
    x = latents(model)
    assert model(x, 10).shape == x.shape


def test_dtypes(folders):
    model = load(folders["ddpm"], dtype="float64")
    assert model.latent_dtype == torch.float64
    x = latents(model)
    assert model(x, 321).dtype == torch.float64
    half = load(folders["ddpm"], dtype=torch.bfloat16)
    assert half.latent_dtype == torch.float32
    out = half(x.float(), 321)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # bfloat16 network, float32 latents: close to the float32 network
    full = load(folders["ddpm"])(x.float(), 321)
    assert (out - full).abs().max() < 0.1 * full.abs().max()


def test_half_precision_text_pipeline_and_variant_weights(folders, tmp_path):
    model = load(folders["sd"], prompt=PROMPT, dtype="float16")
    assert model.unet.dtype == torch.float16 and model.latent_dtype == torch.float32
    x = latents(model)
    out = model(x, 500.5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.to_images(x).dtype == torch.float32  # the VAE asks for float32 (force_upcast)
    # a folder holding only fp16-variant weights
    make_unet(seed=1).save_pretrained(tmp_path / "variant", variant="fp16")
    assert load(tmp_path / "variant").sample_shape == (3, 8, 8)


def test_text_pipeline_folder(folders):
    model = load(folders["sd"], prompt=PROMPT)
    info = model.describe()
    assert info["kind"] == "StableDiffusionPipeline" and info["guidance_scale"] == 7.5 and info["prompt"] == PROMPT
    assert info["classifier_free_guidance"] is True and info["vae_scale_factor"] == 2
    assert model.sample_shape == (4, 8, 8) and info["image_shape"] == [3, 16, 16]
    json.dumps(info)  # reports carry it as it is
    assert model.schedule_options["spacing"] == "leading" and model.schedule_options["steps_offset"] == 1
    x = latents(model, batch=3)
    out = model(x, 981)
    assert out.shape == x.shape and torch.isfinite(out).all()
    images = model.to_images(x)
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    # height and width in pixels, multiples of the VAE's scale factor
    wide = load(folders["sd"], height=12, width=20)
    assert wide.sample_shape == (4, 6, 10)
    assert wide.to_images(latents(wide, batch=1)).shape == (1, 3, 12, 20)


def test_guidance_is_the_classifier_free_formula(folders):
    scale = 3.0
    guided = load(folders["sd"], prompt=PROMPT, negative_prompt="a dog", guidance_scale=scale)
    conditional = load(folders["sd"], prompt=PROMPT, guidance_scale=1.0)
    unconditional = load(folders["sd"], prompt="a dog", guidance_scale=1.0)
    assert conditional.describe()["classifier_free_guidance"] is False
    x = latents(guided, batch=2)
    for t in (900, 450.5):
        u, c = unconditional(x, t), conditional(x, t)
        torch.testing.assert_close(guided(x, t), u + scale * (c - u), rtol=1e-5, atol=1e-5)
    assert (conditional(x, 900) - unconditional(x, 900)).abs().max() > 1e-4  # the prompts matter


def test_bare_conditional_unet_runs_on_a_null_conditioning(folders):
    model = load(folders["sd"] / "unet")
    assert model.sample_shape == (4, 8, 8) and model.to_images(latents(model)) is None
    assert any("zero token" in note for note in model.describe()["notes"])
    assert torch.isfinite(model(latents(model), 500)).all()


def test_stable_diffusion_steps_offset_correction(folders, tmp_path):
    import shutil

    folder = shutil.copytree(folders["sd"], tmp_path / "old-sd")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "steps_offset": 0}))
    model = load(folder)
    assert model.raw_scheduler_config["steps_offset"] == 0
    assert model.schedule_options["steps_offset"] == 1  # as StableDiffusionPipeline corrects it
    assert any("steps_offset" in note for note in model.describe()["notes"])


def test_cached_hub_id_loads_offline(folders, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--tiny--ddpm"
    commit = "0" * 40
    shutil.copytree(folders["ddpm"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model = load("tiny/ddpm")
    assert model.describe()["source"] == "tiny/ddpm" and model.schedule_options["spacing"] == "leading"


# ----------------------------------------------------------------------------- --compat diffusers


def diffusers_loop(unet_call, scheduler_config, steps, x_T, **scheduler_options):
    scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config, **scheduler_options)
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(unet_call(x, t), t, x).prev_sample
    return x, scheduler.timesteps.numpy()


def dpmcli_loop(model, steps, x_T, **options):
    plan = build_plan(SolverConfig(compat="diffusers", steps=steps, **options, **model.schedule_options))
    return sample(plan, model, x_T.clone()).samples, np.array(plan.timestep_values)


def relative(a, b):
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


@pytest.mark.parametrize(
    "name, algo, order, extra",
    [
        ("ddpm", "dpmsolver++", 2, {}),
        ("ddpm", "dpmsolver++", 3, {}),
        ("ddim-v", "dpmsolver++", 2, {"solver_type": "heun"}),
        ("dpm-karras", "dpmsolver", 2, {}),
    ],
)
def test_compat_loop_matches_diffusers_on_the_unconditional_unet(folders, name, algo, order, extra):
    model = load(folders[name])
    unet = diffusers.UNet2DModel.from_pretrained(folders[name], subfolder="unet").eval()

    def unet_call(x, t):
        with torch.no_grad():
            return unet(x, t).sample

    steps = 10
    x_T = latents(model, batch=2, seed=3)
    theirs, their_t = diffusers_loop(
        unet_call, model.pipeline_scheduler_config, steps, x_T, algorithm_type=algo, solver_order=order, **extra
    )
    ours, our_t = dpmcli_loop(model, steps, x_T, algo=algo, order=order, **extra)
    np.testing.assert_array_equal(our_t, their_t)
    assert relative(ours, theirs) < 1e-4


@pytest.mark.parametrize("algo, order", [("dpmsolver++", 2), ("dpmsolver++", 3)])
def test_compat_loop_matches_stable_diffusion_pipeline(folders, algo, order):
    from diffusers import StableDiffusionPipeline

    steps, scale = 8, 5.0
    model = load(folders["sd"], prompt=PROMPT, negative_prompt="a dog", guidance_scale=scale)
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        model.pipeline_scheduler_config, algorithm_type=algo, solver_order=order
    )
    x_T = latents(model, batch=2, seed=5)
    theirs = pipe(
        PROMPT, negative_prompt="a dog", guidance_scale=scale, num_inference_steps=steps, num_images_per_prompt=2,
        latents=x_T.clone(), output_type="latent",
    ).images
    ours, our_t = dpmcli_loop(model, steps, x_T, algo=algo, order=order)
    np.testing.assert_array_equal(our_t, pipe.scheduler.timesteps.numpy())
    assert relative(ours, theirs) < 1e-4
    # and the pictures: our decode equals the pipeline's
    with torch.no_grad():
        decoded = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close(model.to_images(theirs), (decoded / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="no such folder") as info:
        load(tmp_path / "nothing" / "here")
    assert "\n" not in str(info.value)


def test_hub_id_not_in_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as info:
        load("someone/some-model")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "hf download someone/some-model" in message
    assert "--allow-download" in message and "\n" not in message
    # opting in while offline: the download fails, in one line
    with pytest.raises(ConfigError, match="download failed") as info:
        load("someone/some-model", allow_download=True)
    assert "\n" not in str(info.value)


def test_folder_that_is_neither(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ConfigError, match="model_index.json .* or config.json naming UNet2DModel or UNet2DConditionModel"):
        load(tmp_path)
    with pytest.raises(ConfigError, match="not a diffusers folder"):
        load(tmp_path.parent)


def test_wrong_height_and_width(folders):
    with pytest.raises(ConfigError, match=r"--height: 15 is not allowed; it must be a positive multiple of 2"):
        load(folders["sd"], height=15)
    with pytest.raises(ConfigError, match=r"--width: 7 is not allowed; it must be a positive multiple of 2"):
        load(folders["ddpm"], width=7)  # the tiny UNet halves the size once
    assert load(folders["ddpm"], height=12, width=6).sample_shape == (3, 12, 6)


@pytest.mark.parametrize(
    "option, kwargs",
    [
        ("--guidance-scale", {"guidance_scale": 2.0}),
        ("--prompt", {"prompt": "a cat"}),
        ("--negative-prompt", {"negative_prompt": "a dog"}),
    ],
)
def test_unconditional_models_take_no_prompt_or_guidance(folders, option, kwargs):
    with pytest.raises(ConfigError, match=f"^{option}: .* takes no prompt and no guidance \\(it is unconditional\\)"):
        load(folders["ddpm"], **kwargs)


def test_negative_guidance_scale(folders):
    with pytest.raises(ConfigError, match="--guidance-scale: -1.0 is not allowed"):
        load(folders["sd"], guidance_scale=-1.0)


def test_missing_packages_say_how_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r'transformers package; install it with: pip install "dpmcli\[diffusers\]"'):
        load(folders["sd"])
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match=r'diffusers package; install it with: pip install "dpmcli\[diffusers\]"'):
        load(folders["ddpm"])


def test_download_skips_what_is_never_used():
    files = [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors", "safety_checker/model.safetensors",
    ]
    ignore = download_ignore_patterns(files)
    assert "*.bin" in ignore and "safety_checker/*" in ignore
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in ignore  # full weights exist beside it
    assert "vae/diffusion_pytorch_model.fp16.safetensors" not in ignore  # the only vae weights


def test_importing_the_module_loads_neither_diffusers_nor_transformers():
    import subprocess

    code = "import sys, dpmcli.models.hf; print(sorted({'diffusers', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
