"""How close dpmcli comes to each pipeline's own loop: SDXL, PixArt-Sigma, SD3, Flux and Sana.

The tests hold these gaps to a bound (tests/test_pipeline_families.py, tests/test_dropin_pipelines.py);
this script prints the gaps themselves, on the same tiny random pipelines built offline
(tests/tiny_pipelines.py), in float32 on the CPU, from one x_T per pipeline (2 samples, 32 x 32
pixels, the pipeline's default guidance, prompt "a cat on a red house"):

* ``loop``: dpmcli's loop with ``--compat diffusers`` on the loaded model, against the pipeline run with
  DPMSolverMultistepScheduler built from its own scheduler config (DPM-Solver++ 2M and 3M, 6 steps);
* ``drop-in``: the pipeline's images with dpmcli's DPMSolverScheduler (compat) against those with
  DPMSolverMultistepScheduler (Flux, SD3, Sana);
* ``euler``: DPM-Solver-1 on the sigmas FlowMatchEulerDiscreteScheduler ran, against the pipeline with that,
  its own scheduler (SD3, Flux).

Each gap is max |a - b| / max(1, max |b|).

    python benchmarks/pipeline_parity.py        # about a minute on two CPU cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import diffusers  # noqa: E402
from diffusers import DPMSolverMultistepScheduler  # noqa: E402

import tiny_pipelines as tiny  # noqa: E402
from dpmcli.config import SolverConfig  # noqa: E402
from dpmcli.diffusers import DPMSolverScheduler  # noqa: E402
from dpmcli.models.hf import load_diffusers_model  # noqa: E402
from dpmcli.models.hf_families import pack_patches, unpack_patches  # noqa: E402
from dpmcli.plan import build_plan  # noqa: E402
from dpmcli.sampler import sample  # noqa: E402
from dpmcli.vocabulary import flow_match_words  # noqa: E402

PROMPT, STEPS, HALF = "a cat on a red house", 6, tiny.IMAGE_SIZE // 2


def gap(a, b) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def pipeline(kind, folder):
    pipe = getattr(diffusers, tiny.PIPELINES[kind][1]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(pipe.scheduler.config)


def run_latents(kind, pipe, x_T, **call):
    start = pack_patches(x_T) if kind == "flux" else x_T
    out = pipe(PROMPT, num_images_per_prompt=x_T.shape[0], latents=start.clone(), output_type="latent",
               **tiny.CALL_OPTIONS[kind], **call).images
    return unpack_patches(out, HALF, HALF) if kind == "flux" else out


def loop_gap(kind, folder, model, x_T, order):
    pipe, config = pipeline(kind, folder)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(config, **flow_match_words(config), solver_order=order)
    theirs = run_latents(kind, pipe, x_T, num_inference_steps=STEPS)
    plan = build_plan(SolverConfig(compat="diffusers", steps=STEPS, order=order, **model.schedule_options))
    return gap(sample(plan, model, x_T.clone()).samples, theirs)


def dropin_gap(kind, folder):
    pipe, config = pipeline(kind, folder)
    images = []
    for scheduler in (DPMSolverMultistepScheduler.from_config(config, **flow_match_words(config)),
                      DPMSolverScheduler.from_config(config, compat="diffusers")):
        pipe.scheduler = scheduler
        images.append(pipe(PROMPT, num_inference_steps=STEPS, num_images_per_prompt=2, output_type="pt",
                           generator=torch.Generator().manual_seed(0), **tiny.CALL_OPTIONS[kind]).images)
    return gap(images[1], images[0])


def euler_gap(kind, folder, model, x_T):
    pipe, _ = pipeline(kind, folder)
    unshifted = np.linspace(0.99, 1 / STEPS, STEPS)
    theirs = run_latents(kind, pipe, x_T, num_inference_steps=STEPS, sigmas=unshifted.tolist())
    sigmas = tuple(pipe.scheduler.sigmas.double().tolist())
    options = {k: v for k, v in model.schedule_options.items() if k not in ("flow_shift", "flow_mu")}
    plan = build_plan(SolverConfig(algo="dpmsolver++", order=1, steps=STEPS, sigmas=sigmas, **options))
    return gap(sample(plan, model, x_T.clone()).samples, theirs)


def main() -> None:
    torch.set_num_threads(2)
    for library in (diffusers, __import__("transformers")):  # the tiny builders' and pipelines' progress bars and advice
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    print("| pipeline | loop, 2M | loop, 3M | drop-in | euler |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for kind, (builder, cls) in tiny.PIPELINES.items():
            folder = builder(Path(root) / kind)
            model = load_diffusers_model(str(folder), device="cpu", dtype=torch.float32, prompt=PROMPT,
                                         height=tiny.IMAGE_SIZE, width=tiny.IMAGE_SIZE)
            x_T = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(1))
            cells = [f"{loop_gap(kind, folder, model, x_T, order):.1e}" for order in (2, 3)]
            cells.append(f"{dropin_gap(kind, folder):.1e}" if kind in ("flux", "sd3", "sana") else "-")
            cells.append(f"{euler_gap(kind, folder, model, x_T):.1e}" if kind in ("flux", "sd3") else "-")
            print(f"| {cls} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
