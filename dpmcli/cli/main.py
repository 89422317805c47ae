"""The Typer application: parse options, call the library, render. Nothing else."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import GRID, PROCESS, SOLVER
from ..plan import build_plan
from ..report import csv_text, dumps_json
from .app import (
    CONDITIONING, MODEL_HELP, AllowDownload, ClassLabel, Dpi, Format, GuidanceScale, Height, NegativePrompt, Prompt, Quiet,
    SweepList, Width, app, command, sweep_option,
)
from .compare_cmd import joined_job, run_compare
from .console import handle_errors, progress_bar, show_progress, stdout_console, warn
from .options import OUTPUT, RUN, check_format, recipe_beside, recipe_note, use_recipe, with_solver_options
from .plotting import plot_schedule_command
from .render import beside_table, schedule_table
from .run import run_sample
from .train_cmd import run_train
from .tune_cmd import run_tune


@command()
@handle_errors
@with_solver_options
def schedule(
    *,
    solver,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="Show a step recipe from dpmcli tune (JSON), with the stock grids' sigmas beside it.", rich_help_panel=SOLVER)] = None,
    format: Format = "table",
    quiet: Quiet = False,
):
    """Build the noise schedule and step grid and print the per-step plan.

    Shows, for every step, the timestep the model is evaluated at, diffusers' sigma, the VP
    coefficients alpha_t and sigma_t, lambda = log(alpha_t / sigma_t), the step size h in
    lambda and the order the step uses. No model is needed.

    Example: [bold]dpmcli schedule --spacing karras --steps 10 --format json[/bold]
    · [bold]dpmcli schedule --recipe ring10.json[/bold]
    """
    fmt = check_format(format, ("table", "json", "csv"))
    config, beside = solver(), None
    if recipe is not None:
        found, config, _, _ = use_recipe(recipe, config, solver.explicit, None)
        beside = recipe_beside(found)
        warn([recipe_note(found)], quiet)
    plan = build_plan(config)
    warn(plan.warnings, quiet)
    columns = ["step", "timestep", "sigma", "alpha_t", "sigma_t", "lambda", "h", "order", "evaluations"]
    if fmt == "json":
        document = {
            "config": plan.config.to_dict(),
            "sigmas": plan.sigmas.tolist(),
            "steps": plan.step_table(),
            **plan.summary(),
            "calls": [plan.eval_row(r) for r in range(plan.nfe)] if plan.nfe != plan.steps else None,
            "warnings": list(plan.warnings),
            **({"stock_sigmas": beside} if beside is not None else {}),
        }
        sys.stdout.write(dumps_json(document))
    elif fmt == "csv":
        sys.stdout.write(csv_text(plan.step_table(), columns))
    else:
        stdout_console().print(schedule_table(plan))
        if beside is not None:
            stdout_console().print(beside_table(plan, beside))


@command()
@handle_errors
@with_solver_options
def sample(
    *,
    solver,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP, show_default="ring (with --recipe: its model)", rich_help_panel=RUN)] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="Run a step recipe from dpmcli tune (JSON): its solver, grid and model; options you type must agree with it.", rich_help_panel=SOLVER)] = None,
    batch: Annotated[
        Optional[int],
        typer.Option("--batch", "-b", help="Number of samples.", show_default="1024 for mixtures, 100 for digits, 4 or 1 for diffusers", rich_help_panel=RUN),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of x_T and of the SDE noise.", rich_help_panel=RUN)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUN)] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float64, float16 or bfloat16.", rich_help_panel=RUN)] = "float32",
    x_init: Annotated[
        Optional[Path], typer.Option("--x-init", help="Start from this x_T (.npy, one row per sample).", rich_help_panel=RUN)
    ] = None,
    noise: Annotated[
        Optional[str],
        typer.Option(
            "--noise",
            help="SDE noise: gaussian (fresh seeded draws), brownian (the seed's Brownian path: runs at any step count "
            "see increments of one path), k-diffusion (k-diffusion's and ComfyUI's torchsde Brownian tree for the seed) "
            "or a .npy of shape (draws, batch, dims): one draw per step, two for DPM-Solver++ SDE.",
            show_default="gaussian",
            rich_help_panel=RUN,
        ),
    ] = None,
    class_label: ClassLabel = None,
    guidance_scale: GuidanceScale = None,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    height: Height = None,
    width: Width = None,
    allow_download: AllowDownload = False,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write the final samples to this .npy file.", rich_help_panel=OUTPUT)] = None,
    save_images: Annotated[
        Optional[Path],
        typer.Option("--save-images", help="Image models: write the final samples as one grid image (.png).", rich_help_panel=OUTPUT),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Draw the per-step statistics of x and x0 (.png, .svg or .pdf).", rich_help_panel=OUTPUT),
    ] = None,
    plot_samples: Annotated[
        Optional[Path],
        typer.Option("--plot-samples", help="2-D models: final samples over the density, with trajectories.", rich_help_panel=OUTPUT),
    ] = None,
    trace: Annotated[
        Optional[Path],
        typer.Option("--trace", help="Save every intermediate latent and x0 prediction to this .npz file.", rich_help_panel=OUTPUT),
    ] = None,
    trace_stride: Annotated[int, typer.Option("--trace-stride", help="Keep every N-th step in --trace (the last always).", rich_help_panel=OUTPUT)] = 1,
    dpi: Dpi = 150,
    format: Annotated[str, typer.Option("--format", "-f", help="table or json.", rich_help_panel=OUTPUT)] = "table",
    quiet: Quiet = False,
):
    """Run the denoising loop and show per-step statistics of the latents and x0 predictions.

    The default is what diffusers' DPMSolverMultistepScheduler does with Stable Diffusion's
    betas: dpmsolver++, order 2, midpoint, linspace, 20 steps, final sigma zero, on the
    [bold]ring[/bold] mixture, whose exact distribution the final summary compares against.
    [bold]--model digits[/bold] is a small network shipped with dpmcli (8x8 handwritten digits,
    class-conditional; [bold]digits-flow[/bold] is the same network trained by rectified flow, sampled
    on a flow grid); [bold]--model diffusers:PATH[/bold] drives a model saved by diffusers (DDPM,
    Stable Diffusion 1.x/2.x and XL, PixArt-Sigma, SD3, Flux, Sana).
    A model's own training schedule replaces the defaults; options you type win.

    Examples: [bold]dpmcli sample --algo sde-dpmsolver++ --order 2 --steps 30[/bold]
    · [bold]dpmcli sample --model digits --class 3 --guidance-scale 2 --save-images threes.png[/bold]
    """
    fmt = check_format(format, ("table", "json"))
    run_sample(
        config=solver(),
        explicit=solver.explicit,
        model_name=model,
        recipe=recipe,
        conditioning={
            "class_label": class_label, "guidance_scale": guidance_scale, "prompt": prompt, "negative_prompt": negative_prompt,
            "height": height, "width": width, "allow_download": allow_download,
        },
        save_images=save_images,
        batch=batch,
        seed=seed,
        device_name=device,
        dtype_name=dtype,
        x_init=x_init,
        noise_path=noise,
        save=save,
        plot=plot,
        plot_samples=plot_samples,
        trace=trace,
        trace_stride=trace_stride,
        dpi=dpi,
        fmt=fmt,
        quiet=quiet,
        progress=progress_bar,
        progress_enabled=show_progress(quiet),
    )


@command("plot-schedule")
@handle_errors
@with_solver_options(exclude=("spacing", "beta_schedule", "steps", "process", "flow_shift"))
def plot_schedule(
    *,
    solver,
    spacing: Annotated[
        Optional[list[str]],
        typer.Option("--spacing", help="Step grid(s); repeat or give a comma list to overlay several.", show_default="linspace", rich_help_panel=GRID),
    ] = None,
    beta_schedule: Annotated[
        Optional[list[str]],
        typer.Option("--beta-schedule", help="Training betas; repeat or comma list.", show_default="scaled_linear", rich_help_panel=GRID),
    ] = None,
    steps: Annotated[
        Optional[list[str]],
        typer.Option("--steps", help="Number of steps; repeat or comma list.", show_default="20", rich_help_panel=SOLVER),
    ] = None,
    process: Annotated[
        Optional[list[str]],
        typer.Option("--process", help="Noise process(es): vp, flow, edm; repeat or comma list.", show_default="vp", rich_help_panel=PROCESS),
    ] = None,
    flow_shift: Annotated[
        Optional[list[str]],
        typer.Option("--flow-shift", help="flow: shift(s) S; repeat or comma list (1,3,6 overlays three).", show_default="1", rich_help_panel=PROCESS),
    ] = None,
    recipe: Annotated[
        SweepList, typer.Option("--recipe", help="Step recipes from dpmcli tune (JSON); repeat or comma list: each one more curve, beside "
                                "the stock grids (at the recipe's steps and schedule).", rich_help_panel=SOLVER),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Figure file: .png, .svg or .pdf.", rich_help_panel=OUTPUT)] = Path("schedule.png"),
    dpi: Dpi = 150,
    title: Annotated[Optional[str], typer.Option("--title", help="Figure title.", rich_help_panel=OUTPUT)] = None,
    quiet: Quiet = False,
):
    """Draw sigma, lambda, alpha_t / sigma_t and the step size h of one or more step grids.

    Every combination of the values given to [bold]--spacing[/bold], [bold]--beta-schedule[/bold],
    [bold]--steps[/bold], [bold]--process[/bold] and [bold]--flow-shift[/bold] is one curve; the continuous
    schedule is drawn faintly behind each grid's points, and zero-length steps or repeated timesteps are
    marked in red. Says the file written on stderr.

    Example: [bold]dpmcli plot-schedule --spacing linspace,karras,logsnr --steps 10 --out grids.png[/bold]

    Example: [bold]dpmcli plot-schedule --process flow --flow-shift 1,3,6 --out shifts.png[/bold]

    Example: [bold]dpmcli plot-schedule --recipe ring10.json --spacing linspace,karras,logsnr --out tuned.png[/bold]
    """
    lists = dict(spacing=spacing, beta_schedule=beta_schedule, steps=steps, process=process, flow_shift=flow_shift)
    plot_schedule_command(solver=solver, lists=lists, recipes=recipe, out=out, dpi=dpi, title=title, quiet=quiet)




@command()
@handle_errors
@with_solver_options(exclude=("algo", "order", "steps", "method", "startup", "spacing", "solver_type", "final_sigma", "coefficients", "compat",
                              "eta", "s_noise", "corrector"))
def compare(
    *,
    solver,
    algo: Annotated[SweepList, sweep_option("--algo", "Algorithms", "all four")] = None,
    order: Annotated[SweepList, sweep_option("--order", "Orders", "1,2,3")] = None,
    steps: Annotated[SweepList, sweep_option("--steps", "Step counts", "5,10,20,50")] = None,
    method: Annotated[SweepList, sweep_option("--method", "multistep, singlestep, adaptive (ignores --steps), ancestral", "multistep")] = None,
    startup: Annotated[SweepList, sweep_option("--startup", "Multistep start-ups", "lower-order")] = None,
    spacing: Annotated[SweepList, sweep_option("--spacing", "Step grids", "linspace")] = None,
    solver_type: Annotated[SweepList, sweep_option("--solver-type", "Second-order forms", "midpoint")] = None,
    final_sigma: Annotated[SweepList, sweep_option("--final-sigma", "Final sigmas", "zero")] = None,
    coefficients: Annotated[SweepList, sweep_option("--coefficients", "published and/or exact", "published")] = None,
    compat: Annotated[SweepList, sweep_option("--compat", "none, diffusers and/or k-diffusion", "none")] = None,
    eta: Annotated[SweepList, sweep_option("--eta", "SDE and ancestral runs: shares of reverse-SDE noise, >= 0 (0: the ODE)", "1")] = None,
    s_noise: Annotated[SweepList, sweep_option("--s-noise", "SDE runs: noise scales", "1")] = None,
    corrector: Annotated[SweepList, sweep_option("--corrector", "ODE multistep runs: none and/or unic (UniPC's corrector)", "none")] = None,
    recipe: Annotated[SweepList, sweep_option("--recipe", "Step recipes from dpmcli tune (JSON): one run each, beside the sweep", "none")] = None,
    peers: Annotated[
        Optional[str],
        typer.Option("--peers", help="diffusers: add runs of diffusers' UniPC (bh1, bh2), DEIS, Euler and Heun schedulers at every NFE of the sweep, "
                     "on the same x_T and grid options, labelled as diffusers' (needs the diffusers extra).", rich_help_panel="Sweep"),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP, rich_help_panel=RUN)] = "ring",
    batch: Annotated[
        Optional[int], typer.Option("--batch", "-b", help="Samples per run (shared x_T).", show_default="4096 for mixtures, the model's for networks", rich_help_panel=RUN)
    ] = None,
    class_label: ClassLabel = None,
    guidance_scale: Annotated[
        SweepList,
        typer.Option(
            "--guidance-scale", help="Classifier-free guidance scale(s); comma list or repeat: each is one block of runs.",
            show_default="digits 2, text models 7.5", rich_help_panel=CONDITIONING,
        ),
    ] = None,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    height: Height = None,
    width: Width = None,
    allow_download: AllowDownload = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of x_T and of the Brownian path.", rich_help_panel=RUN)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUN)] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float64, float16 or bfloat16.", rich_help_panel=RUN)] = "float32",
    reference_steps: Annotated[
        Optional[int],
        typer.Option(
            "--reference-steps",
            help="Steps of the reference runs: mixtures' fine-step SDE solution; networks' ODE and SDE reference runs.",
            show_default="1000 for mixtures, 200 for networks", rich_help_panel="Ground truth",
        ),
    ] = None,
    bandwidth: Annotated[
        Optional[float], typer.Option("--bandwidth", help="Gaussian-kernel bandwidth of MMD^2 (default: from the mixture, stated in the output).", rich_help_panel="Ground truth")
    ] = None,
    cache_dir: Annotated[
        Optional[Path], typer.Option("--cache-dir", help="Where reference solutions are cached.", show_default="$DPMCLI_CACHE, else $XDG_CACHE_HOME/dpmcli or ~/.cache/dpmcli", rich_help_panel="Ground truth")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute references afresh and store nothing.", rich_help_panel="Ground truth")] = False,
    max_error: Annotated[Optional[float], typer.Option("--max-error", help="Gate: any run with error above this fails (exit 1).", rich_help_panel="CI gates")] = None,
    baseline: Annotated[
        Optional[Path], typer.Option("--baseline", help="Gate: results.json of an earlier run; a run worse by more than --tolerance fails.", rich_help_panel="CI gates")
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Relative slack of --baseline (0.1 = 10% worse allowed).", rich_help_panel="CI gates")] = 0.1,
    min_order: Annotated[Optional[float], typer.Option("--min-order", help="Gate: a solver whose fitted order is below this fails.", rich_help_panel="CI gates")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table, json, csv or markdown.", rich_help_panel=OUTPUT)] = "table",
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Folder for results.json, results.csv, summary.md, config.json and the plots.", rich_help_panel=OUTPUT)
    ] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Error-against-NFE figure (.png, .svg, .pdf).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Finish the interrupted sweep recorded in --out: run only its missing runs (same options, else exit 2).", rich_help_panel=OUTPUT),
    ] = False,
    dpi: Dpi = 150,
    quiet: Quiet = False,
):
    """Run many solvers on the same inputs against ground truth: who is better, by how much.

    Every combination of the sweep options is one run; all runs share x_T and, for SDE runs,
    one Brownian path. On the mixtures, ODE runs are scored against the exact ODE solution, SDE
    runs against the exact distribution (MMD^2) and a fine-step solution on the same path. A
    network has no exact answer: runs are scored against a many-step reference run of the same
    model from the same x_T (said so in the output), with its sample-quality numbers beside.
    Prints a table sorted by error and the fitted convergence order of each solver; gates make
    it a CI check.

    Example: [bold]dpmcli compare --algo dpmsolver++ --order 3 --coefficients published,exact --steps 10,20,40,80[/bold]

    On several GPUs or nodes: [bold]torchrun --nproc-per-node 4 -m dpmcli compare ...[/bold] splits every run's
    samples across the ranks; rank 0 prints and writes.
    """
    with joined_job(device) as (ranks, device):
        code = run_compare(
            solver=solver, sweep_values={
                "algo": algo, "order": order, "steps": steps, "method": method, "startup": startup, "spacing": spacing,
                "solver_type": solver_type, "final_sigma": final_sigma, "coefficients": coefficients, "compat": compat,
                "eta": eta, "s_noise": s_noise, "corrector": corrector,
            },
            recipes=recipe, peers=peers,
            model=model, batch=batch, seed=seed, device=device, dtype=dtype, reference_steps=reference_steps,
            bandwidth=bandwidth, cache_dir=cache_dir, no_cache=no_cache, max_error=max_error, baseline=baseline,
            tolerance=tolerance, min_order=min_order, fmt=format, out=out, resume=resume, plot=plot, dpi=dpi, quiet=quiet,
            conditioning={
                "class_label": class_label, "prompt": prompt, "negative_prompt": negative_prompt, "height": height, "width": width,
                "allow_download": allow_download,
            },
            guidance=guidance_scale, ranks=ranks,
        )
    if code:
        raise typer.Exit(code)


@command()
@handle_errors
@with_solver_options(exclude=("nfe", "steps", "sigmas"))
def tune(
    *,
    solver,
    nfe: Annotated[int, typer.Option("--nfe", help="The budget: model calls per sample. The grid gets as many steps as the method can take with it.", rich_help_panel=SOLVER)] = 10,
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP, rich_help_panel=RUN)] = "ring",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the recipe to this .json file.", rich_help_panel=OUTPUT)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out x_T the result is scored on (compare's default inputs).", rich_help_panel=RUN)] = 0,
    train_seed: Annotated[int, typer.Option("--train-seed", help="Seed of the training x_T the grid is fitted on (must differ from --seed).", rich_help_panel=RUN)] = 1,
    batch: Annotated[Optional[int], typer.Option("--batch", "-b", help="Held-out samples.", show_default="4096 for mixtures, the model's for networks", rich_help_panel=RUN)] = None,
    train_batch: Annotated[Optional[int], typer.Option("--train-batch", help="Training samples.", show_default="512 for mixtures, 200 for networks", rich_help_panel=RUN)] = None,
    evaluations: Annotated[
        Optional[int], typer.Option("--evaluations", help="Most loss evaluations per search (each start and final-step policy is one search).",
                                    show_default="1500 for mixtures, 250 for networks", rich_help_panel=RUN),
    ] = None,
    class_label: ClassLabel = None,
    guidance_scale: GuidanceScale = None,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    height: Height = None,
    width: Width = None,
    allow_download: AllowDownload = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUN)] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float64, float16 or bfloat16.", rich_help_panel=RUN)] = "float32",
    reference_steps: Annotated[
        Optional[int], typer.Option("--reference-steps", help="Networks: steps of the reference runs the error is measured against.", show_default="200", rich_help_panel="Ground truth")
    ] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where reference solutions are cached.", rich_help_panel="Ground truth")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute references afresh and store nothing.", rich_help_panel="Ground truth")] = False,
    format: Annotated[str, typer.Option("--format", "-f", help="table or json.", rich_help_panel=OUTPUT)] = "table",
    quiet: Quiet = False,
):
    """Learn where a solver should call the model: the best grid for one model and a budget of model calls.

    Your solver options (algorithm, order, weights, --corrector, process) stay as given; tune searches the
    evaluation points of the grid (and the final-step policy) to minimise compare's error of the final samples
    on training x_T ([bold]--train-seed[/bold]), then scores the tuned grid and every stock grid of the same solver
    on held-out x_T ([bold]--seed[/bold]). Mixtures are scored against the exact ODE end point (MMD^2 for SDE
    methods), networks against a many-step reference run. The recipe (--out) is used by
    [bold]sample/compare/schedule/plot-schedule --recipe[/bold] and DPMSolverScheduler.from_recipe.

    Example: [bold]dpmcli tune --model ring --nfe 10 --corrector unic --out ring10.json[/bold]
    """
    run_tune(
        solver=solver, nfe=nfe, model=model, out=out, seed=seed, train_seed=train_seed, batch=batch, train_batch=train_batch,
        evaluations=evaluations, guidance_scale=guidance_scale,
        conditioning={"class_label": class_label, "prompt": prompt, "negative_prompt": negative_prompt, "height": height,
                      "width": width, "allow_download": allow_download},
        device=device, dtype=dtype, reference_steps=reference_steps, cache_dir=cache_dir, no_cache=no_cache, fmt=format, quiet=quiet,
        progress=progress_bar, progress_enabled=show_progress(quiet),
    )


@command()
@handle_errors
def train(
    *,
    target: Annotated[str, typer.Argument(help="What to train: digits.", show_default=False)],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", rich_help_panel=OUTPUT,
            help="Folder for digits.safetensors, digits.json (digits-flow.* with --process flow), digits_classifier.safetensors "
            "and digits_data.npz (created if missing).",
        ),
    ],
    process: Annotated[
        str, typer.Option("--process", help="vp (the digits model: epsilon on DDPM's linear betas) or flow (digits-flow: rectified flow, velocity).")
    ] = "vp",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights, batches and noise.")] = 0,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Denoiser training iterations; default: the shipped recipe's (10000 vp, 2500 flow).")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option("--minutes", help="Stop the denoiser after this many minutes even if iterations remain (not reproducible).")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads; the weights depend on it, keep 2 to reproduce the shipped ones.")] = 2,
    format: Annotated[str, typer.Option("--format", "-f", help="table or json (the whole digits.json).", rich_help_panel=OUTPUT)] = "table",
    quiet: Quiet = False,
):
    """Train the learned [bold]digits[/bold] models from scratch: the weights dpmcli ships, reproduced.

    Trains a small classifier of scikit-learn's bundled 8x8 digits (to score samples), then the
    class-conditional denoiser (epsilon on a VP path, or with [bold]--process flow[/bold] the
    velocity of rectified flow), then measures DPM-Solver++(2M) samples at 20 steps,
    unconditional and with classifier-free guidance 1, 2 and 4. Writes four files into
    [bold]--out[/bold] and prints the measured quality; takes a few minutes on two CPU cores and
    needs scikit-learn: pip install "dpmcli\\[train]".

    Use the result with [bold]dpmcli sample --model digits:DIR[/bold] (digits-flow:DIR), or in Python
    with dpmcli.models.digits.load_digits_model("DIR") (process="flow"). Same seed, threads and
    torch version: the same weights.

    Example: [bold]dpmcli train digits --out my-digits --seed 1[/bold]
    · [bold]dpmcli train digits --process flow --out my-flow[/bold]
    """
    fmt = check_format(format, ("table", "json"))
    run_train(
        target=target, out=out, process=process, seed=seed, iterations=iterations, minutes=minutes, threads=threads, fmt=fmt, quiet=quiet,
        progress=progress_bar, progress_enabled=show_progress(quiet),
    )


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
