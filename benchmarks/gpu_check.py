"""GPU check: dpmcli's sampling loop over a diffusers UNet, next to diffusers' own scheduler loop.

    python benchmarks/gpu_check.py                        # CUDA; a random-weight UNet of DDPM's CIFAR-10 size
    python benchmarks/gpu_check.py --model PATH           # a saved UNet2DModel or pipeline folder instead
    python benchmarks/gpu_check.py --device cpu --small   # smoke check on CPU, under a minute

What it does, in one process:

1. The network: a UNet2DModel with the layout of DDPM's CIFAR-10 model (32x32x3, channels
   128-256-256-256, two layers per level, attention at 16x16; about 36 M parameters), random
   weights (seed 0), saved with a DDPM scheduler config (linear betas 1e-4..0.02, 1000 steps)
   to a temporary folder -- or the folder given with ``--model``. It is loaded with
   ``dpmcli.models.hf.load_diffusers_model``, the path ``--model diffusers:PATH`` takes.
2. For each dtype (float32 and float16 on CUDA, float32 and bfloat16 on CPU, whose float16
   kernels are slow; ``--dtypes`` to change): the same x_T (``--batch`` latents, seed 0), the
   same steps and solver (``--algo``, ``--order``, ``--steps``), run
   * by dpmcli: ``dpmcli.sampler.sample`` over ``build_plan(SolverConfig(compat="diffusers", ...,
     **model.schedule_options))``, calling the loaded model (network in the dtype, latents in
     float32) -- once as the command line runs it (a NaN/Inf check after every step, which waits
     for the GPU), once with that check off;
   * by diffusers: ``DPMSolverMultistepScheduler.from_config(model.pipeline_scheduler_config, ...)``
     stepping the same UNet module (input cast to the dtype, output to float32, as above).
   One warm-up run each, then ``--repeats`` rounds in rotating order; CUDA is synchronised
   around every timed run. Figures are medians over the rounds, in steps per second, network
   included: the ratio shows what the solver loop adds or saves around the same network.
3. Agreement: both loops step on the same timesteps, and the largest difference of the final
   samples, dpmcli vs diffusers, relative to max(1, max|x|), stays under 1e-4 in float32 and
   1e-2 in half precision (--compat diffusers repeats diffusers' arithmetic; only round-off
   may differ).

The exit status is 1 when an agreement check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpmcli.config import SolverConfig
from dpmcli.models.hf import load_diffusers_model
from dpmcli.plan import build_plan
from dpmcli.sampler import sample

TOLERANCE = {"float32": 1e-4, "float64": 1e-6, "float16": 1e-2, "bfloat16": 1e-2}

CIFAR10_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "attention_head_dim": None,
}
SMALL_UNET = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}


def build_folder(path: Path, small: bool) -> Path:
    """A random-weight UNet2DModel and a DDPM scheduler config, saved as a DDPMPipeline folder."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**(SMALL_UNET if small else CIFAR10_UNET))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def check_dtype(folder: Path, dtype: str, args, device: torch.device) -> dict:
    from diffusers import DPMSolverMultistepScheduler

    model = load_diffusers_model(str(folder), device=device, dtype=dtype)
    if model.conditional or model.pipeline_scheduler_config is None:
        raise SystemExit("--model: this check drives unconditional UNet2DModel folders that carry a scheduler config")
    plan = build_plan(
        SolverConfig(compat="diffusers", algo=args.algo, order=args.order, steps=args.steps, **model.schedule_options)
    )
    reference = DPMSolverMultistepScheduler.from_config(
        model.pipeline_scheduler_config, algorithm_type=args.algo, solver_order=args.order
    )
    reference.set_timesteps(args.steps)
    same_grid = [float(t) for t in plan.timestep_values] == [float(t) for t in reference.timesteps]
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((args.batch, *model.sample_shape), generator=g, dtype=model.latent_dtype).to(device)
    unet, net_dtype = model.unet, model.dtype

    def dpmcli_run(check=True):
        return sample(plan, model, x_T.clone(), check_finite=check).samples

    def diffusers_run():
        scheduler = DPMSolverMultistepScheduler.from_config(
            model.pipeline_scheduler_config, algorithm_type=args.algo, solver_order=args.order
        )
        scheduler.set_timesteps(args.steps, device=device)
        x = x_T.clone()
        with torch.no_grad():
            for t in scheduler.timesteps:
                out = unet(x.to(net_dtype), t, return_dict=False)[0].to(x.dtype)
                x = scheduler.step(out, t, x, return_dict=False)[0]
        return x

    runs = {"dpmcli": dpmcli_run, "dpmcli-nocheck": lambda: dpmcli_run(False), "diffusers": diffusers_run}
    results = {name: fn() for name, fn in runs.items()}  # warm-up, and the samples compared below
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(timed(device, runs[name])[0])
    ours, theirs = results["dpmcli"], results["diffusers"]
    agreement = (ours - theirs).abs().max().item() / max(1.0, theirs.abs().max().item())
    steps_per_s = {name: args.steps / statistics.median(ts) for name, ts in times.items()}
    return {
        "dtype": dtype,
        "steps_per_s": steps_per_s,
        "ratio": steps_per_s["dpmcli"] / steps_per_s["diffusers"],
        "agreement": agreement,
        "same_grid": same_grid,
        "ok": same_grid and agreement <= TOLERANCE[dtype] and bool(torch.isfinite(ours).all()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a diffusers UNet or pipeline folder (default: random DDPM-CIFAR10-sized UNet)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--dtypes", default=None, help="comma-separated network dtypes (default float32,float16; on CPU float32,bfloat16)"
    )
    parser.add_argument("--batch", type=int, default=None, help="latents per run (default 64; 4 with --small)")
    parser.add_argument("--steps", type=int, default=None, help="solver steps (default 20; 10 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 3 with --small)")
    parser.add_argument("--algo", default="dpmsolver++", help="dpmsolver++ or dpmsolver (the ODE algorithms)")
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="a small UNet and short runs: a smoke check")
    args = parser.parse_args()
    args.batch = args.batch or (4 if args.small else 64)
    args.steps = args.steps or (10 if args.small else 20)
    args.repeats = args.repeats or (3 if args.small else 5)
    device = torch.device(args.device)
    # CPUs have fast bfloat16 kernels but slow float16 ones
    args.dtypes = args.dtypes or ("float32,float16" if device.type == "cuda" else "float32,bfloat16")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --small for a smoke check", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else build_folder(Path(tmp) / "unet", args.small)
        rows = [check_dtype(folder, dtype.strip(), args, device) for dtype in args.dtypes.split(",") if dtype.strip()]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    what = args.model or ("small random UNet" if args.small else "random DDPM-CIFAR10-sized UNet")
    print(f"{what} on {name}: batch {args.batch}, {args.steps} steps, {args.algo} order {args.order}, "
          f"median of {args.repeats}; torch {torch.__version__}")
    print(f"{'dtype':<9} {'dpmcli':>10} {'no check':>10} {'diffusers':>10} {'ratio':>7} {'agreement':>10}  ok")
    print(f"{'':<9} {'steps/s':>10} {'steps/s':>10} {'steps/s':>10}")
    for row in rows:
        s = row["steps_per_s"]
        print(
            f"{row['dtype']:<9} {s['dpmcli']:>10.1f} {s['dpmcli-nocheck']:>10.1f} {s['diffusers']:>10.1f} "
            f"{row['ratio']:>7.3f} {row['agreement']:>10.2e}  {'yes' if row['ok'] else 'NO'}"
        )
    print("ratio: dpmcli / diffusers steps per second (same network, same steps); agreement: max |dpmcli - diffusers| / max(1, max |x|)")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
