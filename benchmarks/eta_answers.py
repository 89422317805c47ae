"""Which eta is best per NFE: sde-dpmsolver++ at eta 0 (the ODE), 0.25, 0.5, 0.75 and 1 (the full SDE).

Every sweep runs through ``dpmcli.compare.run_sweep``, the code of ``dpmcli compare --eta ...``:
all runs of a model share one x_T (seed 0) and one Brownian path per eta. On the exact mixtures
(ring, gmm64; 4096 samples) the score is MMD^2 against the exact data distribution, the measure
every eta can be held to (the ODE run is scored the same way here, from its final samples). On the
digits models (500 samples, class all, guidance 2) it is the class accuracy and the distance to a
200-step reference run of the same eta on the same path (what ``compare`` reports for SDE runs on
a network). Order 2, published weights (DPM-Solver++(2M) SDE), the models' default grids,
lower-order-final. Torch runs on 2 threads; stdout is the same on every run, the time goes to stderr.

    python benchmarks/eta_answers.py        # about six minutes on two CPU cores
"""

from __future__ import annotations

import sys
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
    print(f"eta_answers: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
