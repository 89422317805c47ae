"""Which statistic of the per-sample distances ``dpmcli tune`` should minimise, side by side.

The reported error is the median L2 distance to the exact clean end point on held-out x_T (seed 0,
4096 samples); the search sees the training x_T (seed 1, 512 samples) only. For each cell, the same
tune (every default: stock starts, final-step policies, 1500 evaluations per search) is run with each
loss of ``dpmcli.tune.LOSSES``; only the loss differs. docs/tune.md quotes the table.

    python benchmarks/tune_loss.py     # about 10 minutes on two CPU cores
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from dpmcli.config import SolverConfig
from dpmcli.tune import LOSSES, TuneSpec, tune

QUAD4 = f"gmm:{Path(__file__).parent / 'mixtures' / 'quad4.json'}"
CELLS = (
    ("ring", 5, {}),
    ("ring", 10, {}),
    ("quad4", 5, {}),
    ("quad4", 10, {"order": 3, "corrector": "unic"}),
    ("quad4", 10, {"order": 4, "corrector": "unic"}),
)


def main() -> None:
    torch.set_num_threads(2)
    head = "| model | NFE | solver | " + " | ".join(LOSSES) + " |"
    print(head + "\n|" + "---|" * (3 + len(LOSSES)))
    with tempfile.TemporaryDirectory() as folder:
        for name, nfe, options in CELLS:
            errors = []
            for loss in LOSSES:
                began = time.perf_counter()
                spec = TuneSpec(base=SolverConfig(**options), nfe=nfe, model=QUAD4 if name == "quad4" else name,
                                explicit=frozenset(options), loss=loss, cache_dir=Path(folder))
                result = tune(spec)
                errors.append(result.tuned.held_out_error)
                print(f"{name} NFE {nfe} {options or 'default'} {loss}: {result.tuned.label}, held-out {errors[-1]:.4g} "
                      f"({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
            best = min(errors)
            cells = [f"**{e:.3g}**" if e == best else f"{e:.3g}" for e in errors]
            solver = ", ".join(f"{k} {v}" for k, v in options.items()) or "dpmsolver++ order 2"
            print(f"| {name} | {nfe} | {solver} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
