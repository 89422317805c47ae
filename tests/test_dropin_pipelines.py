"""DPMSolverScheduler inside FluxPipeline, StableDiffusion3Pipeline and SanaPipeline.

Each pipeline (tiny, random, offline: tests/tiny_pipelines.py) runs twice from the same
generator: with diffusers' DPMSolverMultistepScheduler built from the pipeline's scheduler
config, and with dpmcli's drop-in built from the same config with ``compat="diffusers"``. The
images must agree to float32 round-off. The pipelines drive the scheduler their own way -- Flux
computes mu from the image's token count and passes it to ``set_timesteps``, SD3 passes
``sigmas=None``, Sana ships a DPM-Solver flow config -- so this checks the drop-in's interface
as much as its arithmetic. Without compat the drop-in runs dpmcli's own grid, and the images
stay finite.
"""

from __future__ import annotations

import pytest
import torch

# SanaPipeline and DPM-Solver's flow sigmas arrived in diffusers 0.32, Gemma 2 in transformers 4.42
pytest.importorskip("diffusers", minversion="0.32")
pytest.importorskip("transformers", minversion="4.42")

import diffusers  # noqa: E402
from diffusers import DPMSolverMultistepScheduler  # noqa: E402

import tiny_pipelines as tiny  # noqa: E402
from dpmcli.diffusers import DPMSolverScheduler  # noqa: E402
from dpmcli.vocabulary import flow_match_words, is_flow_match  # noqa: E402

PIPELINES = {kind: tiny.PIPELINES[kind] for kind in ("flux", "sd3", "sana")}
STEPS = 6


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("dropin-pipelines")
    out = {}
    for name, (builder, cls) in PIPELINES.items():
        pipe = getattr(diffusers, cls).from_pretrained(builder(root / name))
        pipe.set_progress_bar_config(disable=True)
        out[name] = (pipe, dict(pipe.scheduler.config))  # the config it ships with, before any swap
    return out


def test_flow_match_configs_are_recognised(pipes):
    assert is_flow_match(pipes["flux"][1]) and is_flow_match(pipes["sd3"][1]) and not is_flow_match(pipes["sana"][1])
    # as scheduler.config holds them at run time, without a class name: a shift and no betas
    unnamed = {k: v for k, v in pipes["sd3"][1].items() if k != "_class_name"}
    assert is_flow_match(unnamed) and not is_flow_match({"shift": 1.0, "beta_schedule": "linear"})
    assert DPMSolverScheduler.from_config(unnamed).solver_config.flow_shift == 3.0


def images(name, pipe, scheduler):
    pipe.scheduler = scheduler
    return pipe(
        "a cat on a red house", num_inference_steps=STEPS, num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0), output_type="pt", **tiny.CALL_OPTIONS[name],
    ).images


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("algorithm_type, order", [("dpmsolver++", 2), ("dpmsolver++", 3)])
def test_dropin_in_compat_mode_gives_the_pipelines_images(pipes, name, algorithm_type, order):
    pipe, config = pipes[name]
    words = {"algorithm_type": algorithm_type, "solver_order": order}
    theirs = images(name, pipe, DPMSolverMultistepScheduler.from_config(config, **flow_match_words(config), **words))
    # the drop-in reads a FlowMatch config (SD3's, Flux's) as the flow schedule it is, without the extra words
    ours = images(name, pipe, DPMSolverScheduler.from_config(config, **words, compat="diffusers"))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_dropin_runs_its_own_grid_in_each_pipeline(pipes, name):
    pipe, config = pipes[name]
    scheduler = DPMSolverScheduler.from_config(config, algo="dpmsolver++", order=3, spacing="logsnr")
    out = images(name, pipe, scheduler)
    assert out.shape == (2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE) and torch.isfinite(out).all()
    assert scheduler.plan.steps == STEPS and scheduler.solver_config.process == "flow"
    if name == "flux":  # the pipeline's mu reached the plan: 64 tokens give exp(mu) < 1
        assert scheduler.solver_config.flow_mu == pytest.approx(0.5 + 0.65 * (64 - 256) / (4096 - 256))
