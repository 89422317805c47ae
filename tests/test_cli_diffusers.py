"""`dpmcli sample` and `dpmcli compare` on models saved by diffusers, through the command line.

Tiny random-weight components are saved to a temporary folder (offline). The checks: shapes and
finiteness of what the commands print and write, the schedule read from the model's scheduler
config, typed options winning over it, and --compat diffusers giving the pipeline's own
scheduler's result from the same x_T (1e-4 relative to max |x|).
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DModel
from tiny_diffusers import make_ddpm_pipeline_folder, make_sd_pipeline_folder

from dpmcli.cli.main import app
from dpmcli.noise import initial_latents

runner = CliRunner()
PROMPT = "a photo of a cat"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-diffusers")
    return {
        "ddpm": make_ddpm_pipeline_folder(root / "ddpm"),
        "ddim-v": make_ddpm_pipeline_folder(root / "ddim-v", scheduler="ddim", prediction_type="v_prediction", timestep_spacing="trailing"),
        "sd": make_sd_pipeline_folder(root / "sd"),
    }


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def test_sample_unconditional_pipeline_prints_and_writes(folders, tmp_path):
    images, saved = tmp_path / "grid.png", tmp_path / "x.npy"
    result = invoke("sample", "--model", f"diffusers:{folders['ddpm']}", "--steps", 6, "--batch", 3, "-f", "json",
                    "--save-images", images, "--save", saved, "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["steps"]) == 6 and doc["nfe"] == 6
    assert all(row["nonfinite"] == 0 for row in doc["steps"])
    assert doc["model"]["sample_shape"] == [3, 8, 8] and "mixture" not in doc
    assert np.load(saved).shape == (3, 3, 8, 8) and np.isfinite(np.load(saved)).all()
    from PIL import Image

    with Image.open(images) as picture:
        assert picture.mode == "RGB"


def test_schedule_comes_from_the_model_and_typed_options_win(folders):
    source = f"diffusers:{folders['ddim-v']}"
    doc = json.loads(invoke("sample", "--model", source, "--steps", 4, "--batch", 1, "-f", "json", "-q").stdout)
    assert doc["config"]["prediction_type"] == "v_prediction" and doc["config"]["spacing"] == "trailing"
    assert doc["steps"][0]["timestep"] == 999  # trailing starts at the last training step
    typed = invoke("sample", "--model", source, "--steps", 4, "--batch", 1, "-f", "json", "--spacing", "leading")
    assert typed.exit_code == 0, typed.stderr
    assert json.loads(typed.stdout)["config"]["spacing"] == "leading"
    assert "--spacing leading overrides the model's trailing" in typed.stderr


@pytest.mark.parametrize("algo, order", [("dpmsolver++", 2), ("sde-dpmsolver++", 2), ("dpmsolver++", 3)])
def test_compat_sample_equals_the_pipeline_scheduler(folders, tmp_path, algo, order):
    saved = tmp_path / "ours.npy"
    steps, seed, batch = 8, 4, 2
    noise = None
    args = ["sample", "--model", f"diffusers:{folders['ddpm']}", "--compat", "diffusers", "--algo", algo, "--order", order,
            "--steps", steps, "--batch", batch, "--seed", seed, "--save", saved, "-q"]
    if algo.startswith("sde"):
        noise = torch.randn(steps, batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        np.save(tmp_path / "noise.npy", noise.numpy())
        args += ["--noise", tmp_path / "noise.npy"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    unet = UNet2DModel.from_pretrained(folders["ddpm"], subfolder="unet").eval()
    config = json.loads((folders["ddpm"] / "scheduler" / "scheduler_config.json").read_text())
    scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type=algo, solver_order=order)
    scheduler.set_timesteps(steps)
    x = initial_latents(seed, (batch, 3, 8, 8), "cpu", torch.float32)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            out = unet(x, t).sample
            x = scheduler.step(out, t, x, variance_noise=None if noise is None else noise[i]).prev_sample
    assert relative(np.load(saved), x.numpy()) < 1e-4


def test_sample_stable_diffusion_with_prompt_equals_the_pipeline(folders, tmp_path):
    saved, images = tmp_path / "latents.npy", tmp_path / "sd.png"
    steps, seed, scale = 6, 2, 4.0
    result = invoke("sample", "--model", f"diffusers:{folders['sd']}", "--prompt", PROMPT, "--negative-prompt", "a dog",
                    "--guidance-scale", scale, "--compat", "diffusers", "--steps", steps, "--seed", seed, "--batch", 2,
                    "--save", saved, "--save-images", images, "-q")
    assert result.exit_code == 0, result.stderr
    ours = np.load(saved)
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    x_T = initial_latents(seed, ours.shape, "cpu", torch.float32)
    theirs = pipe(PROMPT, negative_prompt="a dog", guidance_scale=scale, num_inference_steps=steps, num_images_per_prompt=2,
                  latents=x_T, output_type="latent").images
    assert relative(ours, theirs.numpy()) < 1e-4
    assert images.stat().st_size > 0


def test_compare_on_a_pipeline_uses_reference_runs(folders, tmp_path):
    result = invoke("compare", "--model", f"diffusers:{folders['ddpm']}", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2",
                    "--steps", "4,8", "--batch", 2, "--reference-steps", 20, "-f", "json", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["reference"]["kind"] == "reference run" and "reference run" in doc["reference"]["ode"]
    assert len(doc["runs"]) == 8 and all(r["status"] == "ok" and r["error"] > 0 for r in doc["runs"])
    assert all(r["error_metric"] == "l2_median_vs_reference" for r in doc["runs"])
    # a random network is no denoiser, so errors need not shrink here (tests/test_cli_digits.py checks that)
    assert all(np.isfinite(r["error"]) for r in doc["runs"])
    assert (tmp_path / "out" / "samples.png").exists() and (tmp_path / "out" / "results.csv").exists()


def test_conditioning_errors_are_one_line(folders):
    for args, option in (
        (("--model", f"diffusers:{folders['ddpm']}", "--prompt", "x"), "--prompt"),
        (("--model", "ring", "--class", "3"), "--class"),
        (("--model", f"diffusers:{folders['ddpm']}", "--class", "3"), "--class"),
        (("--model", "ring", "--save-images", "x.png"), "--save-images"),
        (("--model", f"diffusers:{folders['sd']}", "--height", "13"), "--height"),
    ):
        result = invoke("sample", *args, "-q")
        assert result.exit_code == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and option in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_compare_on_stable_diffusion_with_guidance_blocks(folders):
    result = invoke("compare", "--model", f"diffusers:{folders['sd']}", "--prompt", PROMPT, "--algo", "dpmsolver++",
                    "--order", "2", "--steps", "3,5", "--guidance-scale", "1,4", "--batch", 2, "--reference-steps", 10,
                    "-f", "json", "-q")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert sorted({r["guidance_scale"] for r in doc["runs"]}) == [1.0, 4.0]
    assert all(r["status"] == "ok" and np.isfinite(r["error"]) for r in doc["runs"])
    assert doc["config"]["model_info"]["prompt"] == PROMPT
    errors = {(r["guidance_scale"], r["steps"]): r["error"] for r in doc["runs"]}
    assert errors[(4.0, 5)] != errors[(1.0, 5)] and errors[(4.0, 3)] != errors[(1.0, 3)]  # guidance really changed


def test_a_bare_conditional_unet_has_no_images(folders, tmp_path):
    source = f"diffusers:{folders['sd'] / 'unet'}"
    picture = tmp_path / "x.png"
    result = invoke("sample", "--model", source, "--steps", 2, "--batch", 1, "--save-images", picture, "-q")
    assert result.exit_code == 2 and "--save-images" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not picture.exists()
    out = tmp_path / "out"
    result = invoke("compare", "--model", source, "--algo", "dpmsolver++", "--order", "1", "--steps", "2,3", "--batch", 2,
                    "--reference-steps", 10, "--out", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert (out / "results.json").exists() and not (out / "samples.png").exists()
