"""Wall time of `dpmcli compare` in one process on one core, next to two torchrun CPU ranks on two cores.

    python benchmarks/distributed_scaling.py                  # the whole check: about 8 minutes on 2 cores
    python benchmarks/distributed_scaling.py --repeats 1      # one round of each, about 3 minutes
    python benchmarks/distributed_scaling.py --skip-mixture --skip-resume

What it runs, each command a subprocess of this checkout's dpmcli (PYTHONPATH is set to it), with
OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1 for every process, so that the comparison is one core
against two:

* one process:  ``python -m dpmcli compare SWEEP --quiet --format json``
* two ranks:    ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m dpmcli compare SWEEP ...``
  (gloo, one rank per core; torchrun picks a free port)

for two sweeps:

* digits: the shipped network, ``--batch 800`` (``--digits-batch``), dpmsolver++ and sde-dpmsolver++,
  orders 1-3, 5/10/20 steps, 200-step reference runs, ``--no-cache`` (the references are
  computed in every run, split across the ranks like the runs);
* ring: the 2-D mixture, ``--batch 4096``, the same solvers at 5/10/20/50 steps, a fresh
  ``--cache-dir`` for every run (the exact ODE solution and the 1000-step SDE reference are
  computed each time).

The two sides alternate (1 then 2 in even rounds, 2 then 1 in odd ones), ``--repeats`` rounds
(3). Reported: median wall time of each side (interpreter and torchrun start-up included), the
speed-up (one process / two ranks), the scaling efficiency (speed-up / 2), the median of the
sweep's own ``seconds`` (what the sweep took once the ranks had joined), and the largest relative
difference between the two sides' run errors (the ranks solve the exact ODE reference in halves,
so the mixture agrees to DOP853's tolerance, not to the bit).

When ``dpmcli compare --help`` lists ``--resume`` it also measures the digits sweep (with a
fresh cache folder this time, as a user's sweep runs) under ``--out DIR``:

* the whole sweep; then ``--resume`` of that finished folder (a finished sweep keeps no run log,
  so dpmcli refuses it at once, exit 2: nothing is recomputed);
* the same sweep interrupted with SIGINT once half its runs are recorded, then ``--resume``: its
  wall time, and how many runs it executed (the run records that appear in ``DIR/runs`` while it
  runs, against the count the interruption said it saved); the resumed results.json is checked
  against the whole sweep's.

Prints a Markdown table per part. The machine is shared: other processes on it show as noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ["--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2,3"]


def digits_sweep(batch: int) -> list[str]:
    return ["--model", "digits", "--batch", str(batch), *SOLVERS, "--steps", "5,10,20", "--reference-steps", "200"]


RING_SWEEP = ["--model", "ring", "--batch", "4096", *SOLVERS, "--steps", "5,10,20,50"]


def environment() -> dict:
    """This checkout's dpmcli, one thread per process, no torchrun variables of an enclosing job."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("DPMCLI_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CI="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    return env


def command(args: list[str], ranks: int) -> list[str]:
    compare = ["-m", "dpmcli", "compare", *args, "--quiet", "--format", "json"]
    if ranks > 1:
        compare = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *compare]
    return [sys.executable, *compare]


def timed_compare(args: list[str], ranks: int, work: Path) -> tuple[float, dict]:
    """(wall seconds, the JSON document rank 0 printed) of one compare."""
    start = time.perf_counter()
    done = subprocess.run(command(args, ranks), cwd=work, env=environment(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command(args, ranks))}\nexited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def error_difference(one: dict, two: dict) -> float:
    """Largest relative difference of the runs' errors (and strong errors) between two documents."""
    a, b = {r["run"]: r for r in one["runs"]}, {r["run"]: r for r in two["runs"]}
    if set(a) != set(b):
        raise SystemExit(f"the two sides ran different runs: {sorted(set(a) ^ set(b))}")
    worst = 0.0
    for label, run in a.items():
        for key in ("error", "strong_error"):
            x, y = run.get(key), b[label].get(key)
            if isinstance(x, float) and isinstance(y, float) and math.isfinite(x) and math.isfinite(y):
                worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
    return worst


def scaling(name: str, args: list[str], repeats: int, ranks: int, work: Path, fresh_cache: bool) -> dict:
    walls: dict[int, list[float]] = {1: [], ranks: []}
    inner: dict[int, list[float]] = {1: [], ranks: []}
    documents: dict[int, dict] = {}
    for round_ in range(repeats):
        for side in ((1, ranks) if round_ % 2 == 0 else (ranks, 1)):
            extra = []
            if fresh_cache:
                cache = work / f"cache-{name}-{round_}-{side}"
                shutil.rmtree(cache, ignore_errors=True)
                extra = ["--cache-dir", str(cache)]
            wall, document = timed_compare(args + extra, side, work)
            walls[side].append(wall)
            inner[side].append(document["seconds"])
            documents[side] = document
            print(f"  {name}: round {round_ + 1}, {'1 process' if side == 1 else f'{side} ranks'}: {wall:.1f} s wall, "
                  f"{document['seconds']:.1f} s in the sweep", file=sys.stderr, flush=True)
    one, many = statistics.median(walls[1]), statistics.median(walls[ranks])
    return {
        "name": name, "runs": len(documents[1]["runs"]), "wall": walls, "inner": inner,
        "one": one, "many": many, "speedup": one / many, "efficiency": one / many / ranks,
        "inner_one": statistics.median(inner[1]), "inner_many": statistics.median(inner[ranks]),
        "difference": error_difference(documents[1], documents[ranks]),
    }


# ---------------------------------------------------------------- --resume


def has_resume() -> bool:
    done = subprocess.run([sys.executable, "-m", "dpmcli", "compare", "--help"], env={**environment(), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)
    return "--resume" in done.stdout


def records(folder: Path) -> set[str]:
    runs = folder / "runs"
    try:
        return {p.name for p in runs.iterdir() if p.suffix == ".json" and not p.name.startswith(".")}
    except OSError:
        return set()


class Watch:
    """The run records that appear in DIR/runs while a command runs (polled every 20 ms)."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self._stop = folder, set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            self.seen |= records(self.folder)
            time.sleep(0.02)

    def __enter__(self):
        self.seen = set(records(self.folder))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def out_compare(args: list[str], out: Path, work: Path, resume: bool = False, interrupt_at: int | None = None):
    """(wall, returncode, stderr) of ``compare ARGS --out OUT [--resume]`` in one process; SIGINT once
    ``interrupt_at`` run records exist."""
    cmd = command([*args, "--out", str(out), *(["--resume"] if resume else [])], 1)
    start = time.perf_counter()
    # SIGINT back to its default in the child: a shell's background job (`... &`, nohup) starts with it
    # ignored, and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen(cmd, cwd=work, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if interrupt_at is not None:
        while proc.poll() is None and len(records(out)) < interrupt_at:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=1800)
    return time.perf_counter() - start, proc.returncode, stderr


def resume_costs(args: list[str], work: Path) -> dict:
    cache = work / "cache-resume"
    args = [*args, "--cache-dir", str(cache)]
    whole_dir, part_dir = work / "whole", work / "part"
    whole, rc, err = out_compare(args, whole_dir, work)
    if rc != 0:
        raise SystemExit(f"the whole sweep exited {rc}: {err[-2000:]}")
    total = len(json.loads((whole_dir / "results.json").read_text())["runs"])
    finished, finished_rc, finished_err = out_compare(args, whole_dir, work, resume=True)
    cut, cut_rc, cut_err = out_compare(args, part_dir, work, interrupt_at=total // 2)
    said = re.search(r"(\d+) of (\d+) run\(s\) saved", cut_err)
    saved_files = len(records(part_dir))
    result = {
        "runs": total, "whole": whole,
        "finished": finished, "finished_rc": finished_rc, "finished_message": last_line(finished_err, work),
        "cut": cut, "cut_rc": cut_rc, "cut_message": last_line(cut_err, work),
        "saved": int(said.group(1)) if said else None, "saved_files": saved_files,
        "log_kept": (part_dir / "sweep.json").is_file(),
    }
    with Watch(part_dir) as watch:
        before = set(watch.seen)
        resumed, resumed_rc, resumed_err = out_compare(args, part_dir, work, resume=True)
    result.update(resumed=resumed, resumed_rc=resumed_rc, resumed_message=last_line(resumed_err, work),
                  executed=len(watch.seen - before))
    if resumed_rc == 0:
        a = json.loads((whole_dir / "results.json").read_text())
        b = json.loads((part_dir / "results.json").read_text())
        result.update(difference=error_difference(a, b), log_left=(part_dir / "sweep.json").exists() or (part_dir / "runs").exists())
    return result


def last_line(stderr: str, work: Path) -> str:
    """The last line a command wrote on stderr, with the temporary folder shown as WORK."""
    return (stderr.strip().splitlines() or [""])[-1].replace(str(work), "WORK")


# ---------------------------------------------------------------- report


def checkout() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return f"{head}{' with uncommitted changes' if dirty else ''}" if head else "not a git checkout"
    except OSError:
        return "unknown"


def print_scaling(rows: list[dict], digits: list[str], args) -> None:
    r = args.ranks
    print(f"`dpmcli compare`, 1 process on 1 core against {r} torchrun CPU ranks (gloo) on {r} cores; "
          f"OMP_NUM_THREADS=1 for every process; median of {args.repeats} alternating rounds; "
          f"{os.cpu_count()} cores here, torch {torch.__version__}, dpmcli at {checkout()}")
    print()
    print("sweeps:")
    print(f"- digits: `compare {' '.join(digits)} --no-cache`")
    if not args.skip_mixture:
        print(f"- ring: `compare {' '.join(RING_SWEEP)} --cache-dir FRESH` (references computed every time)")
    print()
    print(f"| sweep | runs | 1 process, wall | {r} ranks, wall | speed-up | efficiency | in the sweep, 1 / {r} | largest error difference |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['runs']} | {row['one']:.1f} s | {row['many']:.1f} s | {row['speedup']:.2f}x | "
              f"{100 * row['efficiency']:.0f}% | {row['inner_one']:.1f} s / {row['inner_many']:.1f} s | {row['difference']:.1e} |")
    print()
    for row in rows:
        each = "; ".join(f"{'1 process' if side == 1 else f'{side} ranks'} " + ", ".join(f"{w:.1f}" for w in walls)
                         for side, walls in row["wall"].items())
        print(f"{row['name']} wall times (s): {each}")
    print("speed-up: median wall of 1 process / median wall of the ranks (start-up included); efficiency: speed-up / ranks; "
          "in the sweep: the document's own `seconds` (after the ranks joined); error difference: largest relative "
          "difference of a run's error or strong error between the two sides")
    sys.stdout.flush()


def print_resume(resume: dict) -> None:
    print()
    print("`--resume` (digits sweep, one process, `--out DIR`, a fresh cache folder shared by these four commands):")
    print()
    print("| command | wall | exit | runs executed |")
    print("|---|---|---|---|")
    print(f"| the whole sweep | {resume['whole']:.1f} s | 0 | {resume['runs']} |")
    print(f"| `--resume` of the finished folder | {resume['finished']:.1f} s | {resume['finished_rc']} | 0 |")
    saved = resume["saved"] if resume["saved"] is not None else f"{resume['saved_files']} (records left)"
    print(f"| the sweep, SIGINT after half its runs | {resume['cut']:.1f} s | {resume['cut_rc']} | {saved} saved |")
    print(f"| `--resume` of the interrupted folder | {resume['resumed']:.1f} s | {resume['resumed_rc']} | {resume['executed']} |")
    print()
    print(f"--resume of the finished folder says: {resume['finished_message']}")
    if not resume["log_kept"]:
        print(f"NOTE: the interrupted sweep left no run log (exit {resume['cut_rc']}; it said: {resume['cut_message']})")
    if resume["resumed_rc"] != 0:
        print(f"NOTE: the resume failed: {resume['resumed_message']}")
    else:
        print(f"resumed results.json against the whole sweep's: largest error difference {resume['difference']:.1e}; "
              f"run log left in the folder after the resume: {'yes' if resume['log_left'] else 'no'}")
    expected = None if resume["saved"] is None else resume["runs"] - resume["saved"]
    if resume["resumed_rc"] == 0 and expected is not None and expected != resume["executed"]:
        print(f"NOTE: the resume executed {resume['executed']} runs, {expected} were missing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each side (median reported)")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun CPU ranks of the distributed side")
    parser.add_argument("--digits-batch", type=int, default=800, help="samples per digits run")
    parser.add_argument("--skip-mixture", action="store_true", help="no ring sweep")
    parser.add_argument("--skip-resume", action="store_true", help="no --resume measurement")
    args = parser.parse_args()

    digits = digits_sweep(args.digits_batch)
    with tempfile.TemporaryDirectory(prefix="dpmcli-scaling-") as tmp:
        work = Path(tmp)
        rows = [scaling("digits", digits + ["--no-cache"], args.repeats, args.ranks, work, fresh_cache=False)]
        if not args.skip_mixture:
            rows.append(scaling("ring", RING_SWEEP, args.repeats, args.ranks, work, fresh_cache=True))
        print_scaling(rows, digits, args)
        if args.skip_resume:
            return 0
        if not has_resume():
            print("\n`--resume`: `dpmcli compare --help` lists no --resume in this checkout; not measured")
            return 0
        print("  resume: the digits sweep with --out, finished, interrupted and resumed", file=sys.stderr, flush=True)
        resume = resume_costs(digits, work)
    print_resume(resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
