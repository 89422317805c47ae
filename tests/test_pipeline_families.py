"""SDXL, PixArt-Sigma, SD3, Flux and Sana through dpmcli's loop, against the pipelines themselves.

Each pipeline is a tiny random one built offline (tests/tiny_pipelines.py). The check that
matters: with ``--compat diffusers``, dpmcli's loop on the loaded model gives the latents the
pipeline gives with DPMSolverMultistepScheduler built from its own scheduler config, from the
same x_T, with the pipeline's prompt encoding and guidance -- so the model's conditioning, its
network call (Flux's packing and guidance embedding, SDXL's size ids, Sana's timestep scale),
its dynamic shift and its schedule are all the pipeline's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# SanaPipeline and DPM-Solver's flow sigmas arrived in diffusers 0.32, Gemma 2 in transformers 4.42
pytest.importorskip("diffusers", minversion="0.32")
pytest.importorskip("transformers", minversion="4.42")

import diffusers  # noqa: E402
from diffusers import DPMSolverMultistepScheduler  # noqa: E402

import tiny_pipelines as tiny  # noqa: E402
from dpmcli.config import SolverConfig  # noqa: E402
from dpmcli.errors import ConfigError  # noqa: E402
from dpmcli.models.hf import load_diffusers_model  # noqa: E402
from dpmcli.models.hf_families import pack_patches, unpack_patches  # noqa: E402
from dpmcli.plan import build_plan  # noqa: E402
from dpmcli.sampler import sample  # noqa: E402
from dpmcli.vocabulary import flow_match_words  # noqa: E402

PROMPT = "a cat on a red house"
SIZE = tiny.IMAGE_SIZE
BUILDERS = tiny.PIPELINES  # kind -> (builder, pipeline class)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: builder(root / name) for name, (builder, _) in BUILDERS.items()}


def load(folder, **kwargs):
    return load_diffusers_model(str(folder), device="cpu", dtype=torch.float32, height=SIZE, width=SIZE, **kwargs)


def dpmsolver_config(model, **options) -> dict:
    """The DPMSolverMultistepScheduler a user swaps in: a FlowMatch config says its shift as ``shift``."""
    config = dict(model.pipeline_scheduler_config)
    return DPMSolverMultistepScheduler.from_config(config, **flow_match_words(config), **options)


def relative(a, b):
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def pipeline_latents(name, folder, model, x_T, steps, **solver):
    """The pipeline's own loop with DPMSolverMultistepScheduler, from x_T, returning unpacked latents."""
    pipe = getattr(diffusers, BUILDERS[name][1]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = dpmsolver_config(model, **solver)
    start = pack_patches(x_T) if name == "flux" else x_T
    out = pipe(
        PROMPT, num_inference_steps=steps, num_images_per_prompt=x_T.shape[0], latents=start.clone(), output_type="latent",
        **tiny.CALL_OPTIONS[name],
    ).images
    latents = unpack_patches(out, SIZE // 2, SIZE // 2) if name == "flux" else out
    return latents, pipe


@pytest.mark.parametrize("name", list(BUILDERS))
def test_compat_loop_equals_the_pipeline_with_dpmsolver(folders, name):
    steps = 6
    model = load(folders[name], prompt=PROMPT)
    x_T = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(1))
    theirs, pipe = pipeline_latents(name, folders[name], model, x_T, steps, algorithm_type="dpmsolver++", solver_order=2)
    plan = build_plan(SolverConfig(compat="diffusers", steps=steps, algo="dpmsolver++", order=2, **model.schedule_options))
    ours = sample(plan, model, x_T.clone()).samples
    np.testing.assert_array_equal(np.array(plan.timestep_values), pipe.scheduler.timesteps.numpy())
    assert torch.isfinite(ours).all()
    assert relative(ours, theirs) < 1e-4


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_first_order_on_the_pipelines_own_grid_is_its_own_flow_match_euler(folders, name):
    """DPM-Solver-1 in the data form is the flow Euler step: on the sigmas FlowMatchEulerDiscreteScheduler
    makes, dpmcli's loop is the pipeline with its own scheduler. The pipeline is given sigmas from 0.99
    (its default grid starts at s = 1, lambda = -inf, outside every dpmcli grid) and shifts them itself:
    by SD3's shift 3, or by exp(mu) of Flux's image size -- dpmcli's shift of the same values."""
    steps = 5
    model = load(folders[name], prompt=PROMPT)
    pipe = getattr(diffusers, BUILDERS[name][1]).from_pretrained(folders[name])
    pipe.set_progress_bar_config(disable=True)
    x_T = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(4))
    start = pack_patches(x_T) if name == "flux" else x_T
    unshifted = np.linspace(0.99, 1 / steps, steps)
    out = pipe(PROMPT, num_inference_steps=steps, sigmas=unshifted.tolist(), num_images_per_prompt=2,
               latents=start.clone(), output_type="latent", **tiny.CALL_OPTIONS[name]).images
    theirs = unpack_patches(out, SIZE // 2, SIZE // 2) if name == "flux" else out
    sigmas = pipe.scheduler.sigmas.double().numpy()  # the grid the pipeline ran, ending in 0
    shift = SolverConfig(**model.schedule_options).shift
    np.testing.assert_allclose(sigmas[:-1], shift * unshifted / (1 + (shift - 1) * unshifted), rtol=1e-6)
    options = {k: v for k, v in model.schedule_options.items() if k not in ("flow_shift", "flow_mu")}
    plan = build_plan(SolverConfig(algo="dpmsolver++", order=1, steps=steps, sigmas=tuple(sigmas.tolist()), **options))
    ours = sample(plan, model, x_T.clone()).samples
    assert relative(ours, theirs) < 1e-5


def test_networks_load_in_the_dtype_asked_for(folders):
    """diffusers without accelerate judges SD3's checkpoint dtype by its first (float32) buffer; dpmcli casts."""
    model = load_diffusers_model(str(folders["sd3"]), device="cpu", dtype=torch.bfloat16, height=SIZE, width=SIZE)
    assert {p.dtype for p in model.network.parameters()} == {torch.bfloat16}
    x = torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    assert model(x, 500).dtype == torch.float32 and torch.isfinite(model(x, 500)).all()


def test_flux_packing_round_trips_and_is_the_pipelines():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = pack_patches(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpack_patches(packed, 6, 8), x, rtol=0, atol=0)


def test_schedule_and_conditioning_come_from_the_pipeline(folders):
    flux = load(folders["flux"], prompt=PROMPT)
    # Flux's dynamic shift at 16 x 16 latents: 64 tokens, below the 256 of base_shift
    assert flux.schedule_options["process"] == "flow"
    assert flux.schedule_options["flow_mu"] == pytest.approx(0.5 + 0.65 * (64 - 256) / (4096 - 256))
    assert not flux.guiding and flux.guidance_scale == 3.5  # embedded guidance: one call per step
    sd3 = load(folders["sd3"], prompt=PROMPT)
    assert sd3.schedule_options["flow_shift"] == 3.0 and sd3.guiding and sd3.guidance_scale == 7.0
    sdxl = load(folders["sdxl"], prompt=PROMPT)
    assert sdxl.schedule_options["beta_schedule"] == "scaled_linear" and sdxl.guidance_scale == 5.0
    info = sdxl.describe()
    assert info["kind"] == "StableDiffusionXLPipeline" and info["unet"] == "UNet2DConditionModel"
    assert load(folders["sana"]).describe()["transformer"] == "SanaTransformer2DModel"


def test_flux_guidance_feeds_its_embedding(folders):
    model = load(folders["flux"], prompt=PROMPT)
    x = torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    low, high = model(x, 700, guidance_scale=1.0), model(x, 700, guidance_scale=6.0)
    assert relative(low, high) > 1e-4  # the scale is an input of the network
    torch.testing.assert_close(model(x, 700), model(x, 700, guidance_scale=3.5))


@pytest.mark.parametrize("name", ["sd3", "sana"])
def test_decoded_images_equal_the_pipelines(folders, name):
    model = load(folders[name], prompt=PROMPT)
    pipe = getattr(diffusers, BUILDERS[name][1]).from_pretrained(folders[name])
    z = torch.randn((1, *model.sample_shape), generator=torch.Generator().manual_seed(2))
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        decoded = pipe.vae.decode(z / pipe.vae.config.scaling_factor + shift).sample
    torch.testing.assert_close(model.to_images(z), (decoded / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_a_flow_pipeline_without_a_scheduler_is_still_a_flow_model(folders, tmp_path):
    model = load(tiny.edited_copy(folders["sd3"], tmp_path / "sd3", drop=("scheduler",), scheduler=[None, None]))
    assert model.schedule_options == {"process": "flow", "prediction_type": "flow_prediction"}
    assert any("flow-matching model" in note for note in model.notes)


def test_scheduler_configs_that_contradict_the_family_are_refused(folders, tmp_path):
    folder = tiny.edited_copy(folders["sana"], tmp_path / "sana-vp")
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    (path).write_text(json.dumps({**config, "use_flow_sigmas": False, "prediction_type": "epsilon"}))
    with pytest.raises(ConfigError, match="SanaPipeline is a flow model but its scheduler config describes a vp schedule"):
        load(folder)
    (path).write_text(json.dumps({**config, "use_dynamic_shifting": True}))
    with pytest.raises(ConfigError, match="asks for a dynamic shift, which SanaPipeline does not compute"):
        load(folder)


# ----------------------------------------------------------------------------- refusals


def test_flux_refuses_a_negative_prompt_and_schnell_a_guidance_scale(folders, tmp_path):
    with pytest.raises(ConfigError, match="^--negative-prompt: FluxPipeline is guided through its guidance embedding"):
        load(folders["flux"], prompt=PROMPT, negative_prompt="a dog")
    schnell = tiny.make_flux_pipeline_folder(tmp_path / "schnell", guidance_embeds=False)
    with pytest.raises(ConfigError, match="^--guidance-scale: .* has no guidance embedding"):
        load(schnell, guidance_scale=3.0)
    assert load(schnell).guidance_scale is None  # not guided at all


def test_sizes_must_fit_the_patches(folders):
    with pytest.raises(ConfigError, match=r"^--height: 30 is not allowed; it must be a positive multiple of 4"):
        load_diffusers_model(str(folders["flux"]), device="cpu", dtype=torch.float32, height=30, width=SIZE)


def test_pipeline_of_an_unknown_kind_says_what_is_driven(tmp_path, folders):
    folder = tiny.edited_copy(folders["sana"], tmp_path / "other", _class_name="SanaSprintPipeline")
    with pytest.raises(ConfigError, match="SanaSprintPipeline .* is not a kind dpmcli drives; it drives .*FluxPipeline"):
        load(folder)


def test_missing_component_is_one_line(tmp_path, folders):
    folder = tiny.edited_copy(folders["sd3"], tmp_path / "broken", drop=("text_encoder_2",))
    with pytest.raises(ConfigError, match=r"StableDiffusion3Pipeline's text_encoder_2 is missing"):
        load(folder)
