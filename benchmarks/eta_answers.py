"""Which eta is best per NFE: sde-dpmsolver++ at eta 0 (the ODE), 0.25, 0.5, 0.75 and 1 (the full SDE).

Every sweep runs through ``dpmcli.compare.run_sweep``, the code of ``dpmcli compare --eta ...``:
all runs of a model share one x_T (seed 0) and one Brownian path per eta. On the exact mixtures
(ring, gmm64; 4096 samples) the score is MMD^2 against the exact data distribution, the measure
every eta can be held to (the ODE run is scored the same way here, from its final samples). On the
digits models (500 samples, class all, guidance 2) it is the class accuracy and the distance to a
200-step reference run of the same eta on the same path (what ``compare`` reports for SDE runs on
a network). Order 2, published weights (DPM-Solver++(2M) SDE), the models' default grids,
lower-order-final. Torch runs on 2 threads; stdout is the same on every run, the time goes to stderr.

Then where k-diffusion's samplers sit, all at eta 1 and at about the same NFE: 2M SDE, 3M SDE
(``--compat k-diffusion``), Euler ancestral, DPM-Solver++(2S) ancestral and DPM-Solver++ SDE, which
spend two calls a step (3, 5 and 10 steps: 5, 9 and 19 calls). An ancestral run's distance is to the
reference of the SDE it follows (eta 1: the same SDE as 2M SDE's), so the distances compare.

    python benchmarks/eta_answers.py        # about 12 minutes on two CPU cores
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from dpmcli.compare import Sweep, run_sweep
from dpmcli.config import SolverConfig

ETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
NFES = (5, 10, 20)
MIXTURES = ("ring", "gmm64")
NETWORKS = ("digits", "digits-flow")


def sweep(model: str, **options) -> dict:
    """{(eta, nfe): run row} of sde-dpmsolver++ order 2 at every eta (no ODE run in the sweep, so eta 0 is run too)."""
    report = run_sweep(Sweep(
        base=SolverConfig(), values={"algo": ["sde-dpmsolver++"], "order": [2], "steps": list(NFES), "eta": list(ETAS)},
        model=model, seed=0, device="cpu", dtype="float32", cache_dir=None, **options,
    ))
    for row in report.runs:
        if row["status"] != "ok":
            print(f"problem: {model} {row['run']}: {row['status']}", file=sys.stderr)
    return {(row.get("eta", 1.0), row["steps"]): row for row in report.runs}


# k-diffusion's samplers at eta 1: (name, options, steps for NFE about 5, 10, 20)
SAMPLERS = (
    ("2M SDE", dict(algo="sde-dpmsolver++", order=2), NFES),
    ("3M SDE (k-diffusion)", dict(algo="sde-dpmsolver++", order=3, compat="k-diffusion"), NFES),
    ("Euler ancestral", dict(algo="dpmsolver++", method="ancestral", order=1), NFES),
    ("2S ancestral", dict(algo="dpmsolver++", method="ancestral", order=2), (3, 5, 10)),
    ("DPM++ SDE", dict(algo="sde-dpmsolver++", method="singlestep", order=2), (3, 5, 10)),
)


def sampler_rows(model: str, cache_dir: str, **options) -> dict:
    """{(sampler, nfe column): run row}; the reference cache lets every sampler share its SDE's reference."""
    rows = {}
    for name, solver, steps in SAMPLERS:
        report = run_sweep(Sweep(
            base=SolverConfig(), values={**{k: [v] for k, v in solver.items()}, "steps": list(steps)},
            model=model, seed=0, device="cpu", dtype="float32", cache_dir=cache_dir, **options,
        ))
        for nfe, row in zip(NFES, sorted(report.runs, key=lambda r: r["steps"])):
            if row["status"] != "ok":
                print(f"problem: {model} {row['run']}: {row['status']}", file=sys.stderr)
            rows[name, nfe] = row
    return rows


def sampler_table(title: str, rows: dict, key: str, digits: int = 4, lower_is_better: bool = True) -> None:
    names = [name for name, _, _ in SAMPLERS]
    print(f"{title}\n")
    print("| NFE | " + " | ".join(names) + " | best |")
    print("|---|" + "---|" * (len(names) + 1))
    for nfe in NFES:
        values = [rows[name, nfe][key] for name in names]
        top = (min if lower_is_better else max)(values)
        cells = [(f"**{v:.{digits}g}**" if v == top else f"{v:.{digits}g}")
                 + ("" if rows[name, nfe]["nfe"] == nfe else f" ({rows[name, nfe]['nfe']})") for name, v in zip(names, values)]
        best = [name for name, v in zip(names, values) if v == top]
        print(f"| {nfe} | " + " | ".join(cells) + f" | {'all tie' if len(best) == len(names) else ', '.join(best)} |")
    print()


def table(title: str, rows: dict, key: str, digits: int = 4, lower_is_better: bool = True) -> None:
    print(f"{title}\n")
    print("| NFE | " + " | ".join(f"eta {eta:g}" for eta in ETAS) + " | best |")
    print("|---|" + "---|" * (len(ETAS) + 1))
    for nfe in NFES:
        values = [rows[eta, nfe][key] for eta in ETAS]
        top = (min if lower_is_better else max)(values)
        best = [i for i, v in enumerate(values) if v == top]
        cells = [f"**{v:.{digits}g}**" if i in best else f"{v:.{digits}g}" for i, v in enumerate(values)]
        winner = "all tie" if len(best) == len(ETAS) else ", ".join(f"eta {ETAS[i]:g}" for i in best)
        print(f"| {nfe} | " + " | ".join(cells) + f" | {winner} |")
    print()


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    print("#### sde-dpmsolver++ (2M) at every eta\n")
    for model in MIXTURES:
        table(f"{model}: MMD^2 against the exact distribution (4096 samples; lower is better)", sweep(model), "error")
    for model in NETWORKS:
        rows = sweep(model, batch=500, conditioning={"class_label": "all"}, guidance=[2.0])
        table(f"{model}: distance to the 200-step reference run of the same eta on the same path (guidance 2)", rows, "error")
        table(f"{model}: class accuracy (guidance 2; higher is better)", rows, "class_accuracy", 3, lower_is_better=False)
    print("#### k-diffusion's samplers at eta 1 (NFE in brackets where a sampler spends other than the column's)\n")
    with tempfile.TemporaryDirectory() as cache_dir:
        for model in MIXTURES:
            sampler_table(f"{model}: MMD^2 against the exact distribution (4096 samples; lower is better)",
                          sampler_rows(model, cache_dir), "error")
        for model in NETWORKS:
            rows = sampler_rows(model, cache_dir, batch=500, conditioning={"class_label": "all"}, guidance=[2.0])
            sampler_table(f"{model}: distance to the 200-step reference run of the SDE at eta 1 (guidance 2)", rows, "error")
            sampler_table(f"{model}: class accuracy (guidance 2; higher is better)", rows, "class_accuracy", 3, lower_is_better=False)
    print(f"eta_answers: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
