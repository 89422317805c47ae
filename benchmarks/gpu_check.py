"""GPU check: dpmcli's sampling loop over a diffusers UNet, next to diffusers' own scheduler loop.

    python benchmarks/gpu_check.py                        # CUDA; a random-weight UNet of DDPM's CIFAR-10 size
    python benchmarks/gpu_check.py --model PATH           # a saved UNet2DModel or pipeline folder instead
    python benchmarks/gpu_check.py --device cpu --small   # smoke check on CPU, under a minute
    python benchmarks/gpu_check.py --small --torchrun only --torchrun-on-cpu   # step 4 alone, on 2 CPU ranks: ~1.5 min

What it does (steps 1-3 in this process; step 4 starts its own):

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

4. ``compare`` on torchrun (needs 2 CUDA GPUs; skipped, saying so, when fewer are visible): a tiny
   sweep (dpmsolver++ and sde-dpmsolver++, order 2, 5 and 10 steps) on the ``ring`` mixture (256
   samples) and on the UNet folder of step 1 (4 latents, 20-step reference runs), each run three
   times with ``--format json --out DIR``: one process on cuda:0 (its own cache folder);
   ``python -m torch.distributed.run --standalone --nproc-per-node 2 ... --device cuda``, ranks on
   cuda:0 and cuda:1 over NCCL (a fresh cache folder: the references are computed, split across
   the ranks); the same again (the same cache folder: rank 0 reads the references and sends them). Each
   two-rank results.json must match the one-process one in every field but timings and cache
   counters (the idea of tests/test_distributed.py): numbers to a relative 1e-6 on the mixture
   (the ranks solve their halves of the exact ODE reference, so DOP853 steps differently) and 1e-3
   on the UNet (each GPU runs a block of half the batch in float32, TF32 convolutions included, and
   may pick other kernels for it); the second two-rank run must have read its references from the
   cache; stdout must be one JSON document (rank 0 alone prints). The table shows the largest
   relative difference found, so the margin to the tolerance is visible. ``--torchrun-on-cpu`` runs
   this step on two CPU ranks (gloo) instead, to check the script on a machine without GPUs (UNet
   tolerance 1e-5 there: the CPU convolutions of a block of 2 latents round differently from those
   of the batch of 4, measured 2.4e-7); ``--torchrun only`` runs this step alone, ``--torchrun skip``
   leaves it out.

The exit status is 1 when an agreement check fails (the torchrun step's included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
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
ROOT = Path(__file__).resolve().parents[1]
# torchrun step: relative tolerance of every number of results.json, two ranks against one process
TORCHRUN_RTOL = {"mixture": 1e-6, "network": 1e-3, "network-cpu": 1e-5}
# fields that differ between any two runs (timings) or between cache states, not between results
NOT_RESULTS = ("seconds", "cache", "cache_hits", "cache_misses", "cache_note", "reference_nfe")

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


# ---------------------------------------------------------------- step 4: compare on torchrun


def result_differences(a, b, rtol: float, path: str = "") -> tuple[list[str], float]:
    """(where two compare documents differ beyond rtol, the largest relative difference of their numbers),
    timings and cache counters aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        found, worst = [], 0.0
        for key in sorted(set(a) | set(b)):
            if key.endswith("seconds") or key in NOT_RESULTS:
                continue
            if key not in a or key not in b:
                found.append(f"{path}/{key}: missing on one side")
                continue
            more, largest = result_differences(a[key], b[key], rtol, f"{path}/{key}")
            found, worst = found + more, max(worst, largest)
        return found, worst
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"], 0.0
        found, worst = [], 0.0
        for i, (x, y) in enumerate(zip(a, b)):
            more, largest = result_differences(x, y, rtol, f"{path}[{i}]")
            found, worst = found + more, max(worst, largest)
        return found, worst
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        if math.isclose(a, b, rel_tol=rtol, abs_tol=1e-15):
            return [], abs(a - b) / max(abs(a), abs(b), 1e-300)
        return [f"{path}: {a!r} against {b!r}"], abs(a - b) / max(abs(a), abs(b), 1e-300)
    return ([] if a == b else [f"{path}: {a!r} against {b!r}"]), 0.0


def compare_job(sweep: list[str], ranks: int, out: Path, cache: Path) -> tuple[dict, str]:
    """(results.json, problem or "") of one ``dpmcli compare`` of this checkout, in one process or on ``ranks`` ranks."""
    command = ["-m", "dpmcli", "compare", *sweep, "--quiet", "--format", "json", "--out", str(out), "--cache-dir", str(cache)]
    if ranks > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *command]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CI="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, *command], cwd=out.parent, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-6:])
        return {}, f"{ranks} rank(s) exited {done.returncode}: {tail}"
    try:
        json.loads(done.stdout)
    except ValueError:
        return {}, f"{ranks} rank(s): stdout is not one JSON document (did a rank other than 0 print?)"
    try:
        return json.loads((out / "results.json").read_text()), ""
    except (OSError, ValueError) as exc:
        return {}, f"{ranks} rank(s): no readable {out / 'results.json'} ({exc})"


def torchrun_check(folder: Path, work: Path, on_cpu: bool) -> list[dict] | None:
    """Step 4: a tiny compare on two ranks against one process; None when fewer than 2 GPUs are visible (main says so)."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not on_cpu and visible < 2:
        return None
    # the ranks take "cuda" as cuda:LOCAL_RANK; the single process names cuda:0, the device rank 0 reports in config.device
    alone, ranked = (["--device", "cpu"], ["--device", "cpu"]) if on_cpu else (["--device", "cuda:0"], ["--device", "cuda"])
    solvers = ["--algo", "dpmsolver++,sde-dpmsolver++", "--order", "2", "--steps", "5,10"]
    cases = [
        ("ring", ["--model", "ring", "--batch", "256", *solvers], TORCHRUN_RTOL["mixture"]),
        ("unet", ["--model", f"diffusers:{folder}", "--batch", "4", "--reference-steps", "20", *solvers],
         TORCHRUN_RTOL["network-cpu" if on_cpu else "network"]),
    ]
    rows = []
    for name, sweep, rtol in cases:
        start = time.perf_counter()
        one, problem = compare_job(sweep + alone, 1, work / f"{name}-one", work / f"cache-{name}-one")
        problems, worst, hits = [problem] if problem else [], 0.0, None
        for label in ("computed", "cached"):  # the second run reads the references the first one stored
            if not one:
                break
            two, problem = compare_job(sweep + ranked, 2, work / f"{name}-two-{label}", work / f"cache-{name}-two")
            if problem:
                problems.append(problem)
                break
            found, largest = result_differences(one, two, rtol)
            worst = max(worst, largest)
            problems += [f"{label} references: {line}" for line in found[:5]] + (
                [f"{label} references: {len(found) - 5} more"] if len(found) > 5 else [])
            if label == "cached":
                hits = (two.get("reference") or {}).get("cache_hits")
                if not hits:
                    problems.append(f"the second two-rank run read no reference from the cache (cache_hits {hits!r})")
        rows.append({"name": name, "runs": len(one.get("runs", [])), "rtol": rtol, "largest": worst, "hits": hits,
                     "seconds": time.perf_counter() - start, "problems": problems, "ok": not problems})
    return rows


def print_torchrun(rows: list[dict], on_cpu: bool) -> None:
    where = "2 CPU ranks (gloo)" if on_cpu else "2 GPUs (NCCL), cuda:0 and cuda:1"
    print(f"compare on torchrun, {where}, against one process: every number of results.json but timings and cache counters")
    print(f"{'model':<6} {'runs':>5} {'largest rel. diff':>18} {'tolerance':>10} {'cache hits':>11} {'seconds':>8}  ok")
    for row in rows:
        print(f"{row['name']:<6} {row['runs']:>5} {row['largest']:>18.2e} {row['rtol']:>10.0e} {row['hits'] or 0:>11} "
              f"{row['seconds']:>8.1f}  {'yes' if row['ok'] else 'NO'}")
        for problem in row["problems"]:
            print(f"       {problem}")


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
    parser.add_argument("--torchrun", choices=("auto", "skip", "only"), default="auto",
                        help="step 4, compare on two torchrun ranks: auto (when 2 GPUs are visible), skip, or only this step")
    parser.add_argument("--torchrun-on-cpu", action="store_true", help="step 4 on two CPU ranks (gloo) instead of two GPUs")
    args = parser.parse_args()
    args.batch = args.batch or (4 if args.small else 64)
    args.steps = args.steps or (10 if args.small else 20)
    args.repeats = args.repeats or (3 if args.small else 5)
    device = torch.device(args.device)
    # CPUs have fast bfloat16 kernels but slow float16 ones
    args.dtypes = args.dtypes or ("float32,float16" if device.type == "cuda" else "float32,bfloat16")
    timing = args.torchrun != "only"
    if timing and device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --small for a smoke check (the torchrun step needs 2 GPUs; "
              "add --torchrun-on-cpu to run it on two CPU ranks)", file=sys.stderr)
        return 2

    rows, distributed = [], None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else build_folder(Path(tmp) / "unet", args.small)
        if timing:
            rows = [check_dtype(folder, dtype.strip(), args, device) for dtype in args.dtypes.split(",") if dtype.strip()]
        if args.torchrun != "skip":
            distributed = torchrun_check(folder.resolve(), Path(tmp), args.torchrun_on_cpu)

    if timing:
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
    if args.torchrun == "skip":
        print("torchrun check: skipped (--torchrun skip)")
    elif distributed is not None:
        if timing:
            print()
        print_torchrun(distributed, args.torchrun_on_cpu)
    else:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        print(f"torchrun check: skipped: {visible} CUDA GPU(s) visible, it needs 2 (two ranks, one GPU each); "
              "--torchrun-on-cpu runs it on two CPU ranks")
    return 0 if all(row["ok"] for row in rows + (distributed or [])) else 1


if __name__ == "__main__":
    sys.exit(main())
