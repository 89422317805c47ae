"""Wall time of the default `dpmcli compare` sweep, without and with the cached reference.

The default sweep: 4 algorithms x orders 1-3 x steps 5, 10, 20, 50 on `ring`, 4096 samples
(float32, CPU). The first run starts from an empty cache folder (it computes the exact ODE
solution and the fine-step SDE references), the second reuses them. Torch is pinned to one
thread per process here only if --threads 1 is given; the targets are for 2 cores.

    python benchmarks/compare_speed.py              # prints both times; targets: < 30 s and < 10 s
    python benchmarks/compare_speed.py --repeats 3  # median of 3 cached runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dpmcli.compare import Sweep, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="cached runs to time (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        sweep = Sweep(cache_dir=Path(cache), device="cpu")
        start = time.perf_counter()
        report = run_sweep(sweep)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run_sweep(sweep)
            warm.append(time.perf_counter() - start)
    print(f"default sweep: {len(report.runs)} runs, {sum(r['nfe'] for r in report.runs)} model evaluations, torch threads {torch.get_num_threads()}")
    print(f"  empty cache   {cold:6.2f} s   (target < 30 s)")
    print(f"  cached        {statistics.median(warm):6.2f} s   (target < 10 s; median of {len(warm)})")


if __name__ == "__main__":
    main()
