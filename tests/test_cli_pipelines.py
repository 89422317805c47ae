"""`dpmcli sample` and `dpmcli compare` on SD3, Flux, Sana, SDXL and PixArt pipelines, through the command line.

Tiny random pipelines (tests/tiny_pipelines.py), offline. The checks: what the commands print and
write (the process and shift read from the pipeline, a decoded picture), typed options winning
over the model's, and every refusal one line with exit code 2 and nothing written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

# SanaPipeline and DPM-Solver's flow sigmas arrived in diffusers 0.32, Gemma 2 in transformers 4.42
pytest.importorskip("diffusers", minversion="0.32")
pytest.importorskip("transformers", minversion="4.42")

import tiny_pipelines as tiny  # noqa: E402
from dpmcli.cli.main import app  # noqa: E402

runner = CliRunner()
SIZE = ("--height", tiny.IMAGE_SIZE, "--width", tiny.IMAGE_SIZE)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-pipelines")
    return {
        "sd3": tiny.make_sd3_pipeline_folder(root / "sd3"),
        "flux": tiny.make_flux_pipeline_folder(root / "flux"),
        "sdxl": tiny.make_sdxl_pipeline_folder(root / "sdxl"),
    }


def test_sample_flux_reads_its_flow_schedule_and_writes_a_picture(folders, tmp_path):
    picture = tmp_path / "flux.png"
    result = invoke("sample", "--model", f"diffusers:{folders['flux']}", "--prompt", "a cat", *SIZE, "--steps", 4,
                    "--batch", 2, "-f", "json", "--save-images", picture, "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["config"]["process"] == "flow" and doc["config"]["prediction_type"] == "flow_prediction"
    assert doc["config"]["flow_mu"] == pytest.approx(0.5 + 0.65 * (64 - 256) / (4096 - 256))
    assert doc["model"]["kind"] == "FluxPipeline" and doc["model"]["transformer"] == "FluxTransformer2DModel"
    assert all(row["nonfinite"] == 0 for row in doc["steps"]) and doc["nfe"] == 4
    from PIL import Image

    with Image.open(picture) as image:
        assert image.size[0] >= tiny.IMAGE_SIZE and image.mode == "RGB"


def test_typed_flow_shift_replaces_the_dynamic_one(folders):
    result = invoke("sample", "--model", f"diffusers:{folders['flux']}", *SIZE, "--steps", 3, "--batch", 1,
                    "--flow-shift", 3, "-f", "json", "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["config"]["flow_shift"] == 3.0 and doc["config"].get("flow_mu") is None


def test_compare_runs_on_sd3(folders):
    result = invoke("compare", "--model", f"diffusers:{folders['sd3']}", *SIZE, "--algo", "dpmsolver++", "--order", 2,
                    "--steps", "3,6", "--batch", 2, "--reference-steps", 12, "-f", "json", "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    errors = {run["steps"]: run["error"] for run in doc["runs"]}
    assert errors[6] < errors[3] and all(np.isfinite(list(errors.values())))


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("sd3", ("--beta-schedule", "linear"), "--beta-schedule: applies to --process vp only, not --process flow"),
        ("sd3", ("--process", "vp"), "--process: 'vp' is not allowed with --model diffusers:"),
        ("sdxl", ("--flow-shift", "3"), "--flow-shift: applies to --process flow only, not --process vp"),
        ("flux", ("--negative-prompt", "a dog"), "--negative-prompt: FluxPipeline is guided through its guidance embedding"),
        ("flux", ("--height", "30"), "--height: 30 is not allowed; it must be a positive multiple of 4"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(folders, tmp_path, name, args, message):
    saved = tmp_path / "x.npy"
    result = invoke("sample", "--model", f"diffusers:{folders[name]}", *args, "--steps", 3, "--save", saved)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"dpmcli: error: {message}") and result.stderr.count("\n") == 1
    assert not saved.exists()


def test_unknown_pipeline_and_missing_component(folders, tmp_path):
    other = tiny.edited_copy(folders["sd3"], tmp_path / "other", _class_name="StableDiffusion3ControlNetPipeline")
    result = invoke("sample", "--model", f"diffusers:{other}", "--steps", 3)
    assert result.exit_code == 2 and "is not a kind dpmcli drives; it drives" in result.stderr
    assert "StableDiffusion3Pipeline, FluxPipeline, SanaPipeline" in result.stderr and result.stderr.count("\n") == 1
    broken = tiny.edited_copy(folders["flux"], tmp_path / "broken", drop=("tokenizer_2",))
    result = invoke("sample", "--model", f"diffusers:{broken}", "--steps", 3)
    assert result.exit_code == 2 and "FluxPipeline's tokenizer_2 is missing" in result.stderr
