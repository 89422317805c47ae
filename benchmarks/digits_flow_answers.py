"""DPM-Solver++ against flow Euler on a learned flow-matching model: the shipped ``digits-flow``.

The questions of docs/processes.md (does DPM-Solver++(2M)/(3M) beat flow Euler at few steps,
which shift), asked of a trained network instead of an exact toy. Every sweep runs through
``dpmcli.compare.run_sweep``, the code of ``dpmcli compare --model digits-flow``: all runs share
one x_T (seed 0, 500 samples, class "all" so that sample i asks for digit i mod 10, guidance
scale 2), and each run is scored against a reference run of the same model from the same x_T
over the same lambda range (200 steps of DPM-Solver++ order 3, exact weights, singlestep
start-up, uniform in lambda: what ``compare`` does for every network). Orders 1-3 of
DPM-Solver++ (order 1 in the data form is flow Euler: checked here against a hand-written
Euler step x <- x + (s_next - s) v in float64), NFE 5, 10, 20, shift 1, 3 and 6 on the default
flow grid (diffusers' use_flow_sigmas grid), float32 latents and network, published weights,
lower-order-final and final sigma zero. Torch runs on 2 threads; stdout is the same on every
run, the run time goes to stderr.

    python benchmarks/digits_flow_answers.py        # 30-100 s on two CPU cores
"""

from __future__ import annotations

import sys
import time

import torch

from dpmcli.api import DPMSolver
from dpmcli.coefficients import prediction_of
from dpmcli.compare import Sweep, run_sweep
from dpmcli.config import SolverConfig
from dpmcli.models.digits import load_digits_model, nearest_distances, sample_digits
from dpmcli.schedule import Schedule

MODEL, BATCH, SEED, GUIDANCE = "digits-flow", 500, 0, 2.0
NFES = (5, 10, 20)
SHIFTS = (1.0, 3.0, 6.0)
ORDERS = {1: "flow Euler", 2: "DPM-Solver++(2M)", 3: "DPM-Solver++(3M)"}


def sweep(shift: float):
    """One compare sweep at ``shift``: orders 1-3 x NFE, {(order, nfe): run row}."""
    report = run_sweep(Sweep(
        base=SolverConfig(flow_shift=shift), values={"algo": ["dpmsolver++"], "order": list(ORDERS), "steps": list(NFES)},
        model=MODEL, batch=BATCH, seed=SEED, device="cpu", dtype="float32", cache_dir=None,
        conditioning={"class_label": "all"}, guidance=[GUIDANCE], explicit=frozenset({"flow_shift"}),
    ))
    for row in report.runs:
        if row["status"] != "ok":
            print(f"problem: shift {shift:g} {row['run']}: {row['status']}", file=sys.stderr)
    return {(row["order"], row["steps"]): row for row in report.runs}, report


def euler_check(model, shift: float, steps: int) -> tuple[float, float]:
    """(max |DPM-Solver-1 - hand-written flow Euler|, max |x_T|): float64 network and latents, the same grid and x_T."""
    solver = DPMSolver(seed=SEED, **{**model.schedule_options, "algo": "dpmsolver++", "order": 1, "steps": steps, "flow_shift": shift})
    x_T = solver.initial_latents((BATCH, 1, 8, 8), dtype=torch.float64)
    x = x_T.clone()
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    s = [float(v) for v in solver.sigmas]  # flow: the grid's sigma column is s, the network is told 1000 s
    y = x_T.clone()
    for i, t in enumerate(solver.timesteps):
        y = y + (s[i + 1] - s[i]) * model(y, t)
    return float((x - y).abs().max()), float(x_T.abs().max())


def training_loss(model, held_out: bool, draws: int = 40) -> float:
    """The model's own training loss (conditional, EMA weights) on the training or the held-out digits, ``draws`` noisings each."""
    schedule = Schedule.from_config(SolverConfig(**model.schedule_options))
    generator = torch.Generator().manual_seed(123)
    x0, labels = model.data.split(held_out=held_out)
    total = 0.0
    for _ in range(draws):
        t = schedule.training_timesteps(torch.rand(len(labels), generator=generator, dtype=torch.float64))
        alpha, sigma = (v[:, None, None, None].float() for v in schedule.noise_levels(t))
        eps = torch.randn(x0.shape, generator=generator)
        with torch.no_grad():
            out = model.net(alpha * x0 + sigma * eps, t.float(), labels)
        total += torch.mean((out - prediction_of(model.prediction_type, x0, eps, alpha, sigma)) ** 2).item()
    return total / draws


def memorisation() -> None:
    """How close samples come to the training digits, and the training loss on held-out digits, for both digits models."""
    print("\nHow close samples come to the training digits (DPM-Solver++(2M), 20 steps, guidance 2, 500 samples, seed 0), "
          "and each model's training loss on the 1,500 training and the 297 held-out digits (40 noisings each).\n")
    print("| model | NN distance quantiles 5/25/50/75 % | share closer than 1.0 | loss, training digits | loss, held-out digits | held-out / training |")
    print("|---|---|---|---|---|---|")
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75], dtype=torch.float64)
    for name, process in (("digits (epsilon)", "vp"), ("digits-flow (velocity)", "flow")):
        model = load_digits_model(process=process, guidance_scale=GUIDANCE)
        train, _ = model.data.split(held_out=False)
        distances = nearest_distances(sample_digits(model, BATCH, SEED).clamp(-1, 1), train)
        quantiles = "/".join(f"{v:.2f}" for v in torch.quantile(distances, levels).tolist())
        seen, unseen = training_loss(model, False), training_loss(model, True)
        print(f"| {name} | {quantiles} | {(distances < 1.0).double().mean().item():.1%} | {seen:.4f} | {unseen:.4f} | {unseen / seen:.2f} |")
    held_out, _ = model.data.split(held_out=True)
    distances = nearest_distances(held_out, train)
    quantiles = "/".join(f"{v:.2f}" for v in torch.quantile(distances, levels).tolist())
    print(f"| real held-out digits | {quantiles} | {(distances < 1.0).double().mean().item():.1%} | | | |")


def cell(value: float, digits: str = ".4g") -> str:
    return f"{value:{digits}}"


def table(results: dict, key: str, caption: str, digits: str = ".4g", ratio: bool = False) -> None:
    print(f"\n{caption}\n")
    header = "| shift | NFE | " + " | ".join(ORDERS.values()) + " |" + (" Euler / best multistep |" if ratio else "")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shift in SHIFTS:
        for nfe in NFES:
            values = [results[shift][(order, nfe)][key] for order in ORDERS]
            line = f"| {shift:g} | {nfe} | " + " | ".join(cell(v, digits) for v in values) + " |"
            if ratio:
                line += f" {values[0] / min(values[1:]):.2f}x |"
            print(line)


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    results, references = {}, {}
    for shift in SHIFTS:
        results[shift], report = sweep(shift)
        references[shift] = report.reference
    print("#### digits-flow: DPM-Solver++ against flow Euler, by shift")
    print(f"\n{BATCH} samples, seed {SEED}, class all, guidance {GUIDANCE:g}; DPM-Solver++ orders 1-3 on the default flow grid; "
          f"error = median over the samples of the L2 distance (64 pixels in [-1, 1]) to the {references[1.0]['reference_steps']}-step "
          "reference run from the same x_T (DPM-Solver++ order 3, exact weights, uniform in lambda), computed for each shift.")
    table(results, "error", "Reference error (lower is better); last column: flow Euler's error over the better multistep one's "
          "(above 1: the multistep solver wins).", ratio=True)
    real = load_digits_model(process="flow").config["real"]
    table(results, "class_accuracy", "Class accuracy: the share of samples the classifier reads as the digit asked for "
          f"(real held-out digits: {real['class_accuracy']:.3f}).", digits=".3f")
    table(results, "classifier_confidence", "Classifier confidence: the mean top softmax probability (real held-out digits: "
          f"{real['classifier_confidence']:.4f}).", digits=".4f")
    table(results, "nn_distance", "NN distance: median L2 distance to the nearest training digit (real held-out digits: "
          f"{real['nn_distance']:.2f}).", digits=".3f")
    model = load_digits_model(process="flow", dtype=torch.float64, class_label="all", guidance_scale=GUIDANCE)
    worst = [euler_check(model, shift, nfe) for shift in SHIFTS for nfe in NFES]
    diff, scale = max(w[0] for w in worst), max(w[1] for w in worst)
    print(f"\nDPM-Solver++ order 1 against a hand-written flow Euler step x <- x + (s_next - s) v(x, 1000 s) on the same grid from "
          f"the same x_T (float64 network and latents, shifts {', '.join(f'{s:g}' for s in SHIFTS)}, NFE "
          f"{', '.join(map(str, NFES))}): max |difference| {diff:.3g}; |x_T| is up to {scale:.3g}.")
    memorisation()
    print(f"digits_flow_answers: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
