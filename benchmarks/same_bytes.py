"""Behaviour check for refactors: the same commands with the same seeds write the same bytes.

    python benchmarks/same_bytes.py --against HEAD~3      # the working tree against an earlier commit
    python benchmarks/same_bytes.py record DIR            # store this tree's outputs in DIR
    python benchmarks/same_bytes.py check DIR             # compare this tree's outputs with DIR

Each command below runs as ``python -m dpmcli ...`` in a fresh folder with its own reference
cache, torch on one thread. Recorded: stdout of every ``--format json`` run (with timings
and the cache folder removed: keys ``seconds``, ``*_seconds`` and ``cache``) and every array a run saves
(``--save``, ``--trace``). ``--against`` checks the old commit out into a temporary git worktree,
records there, then checks the working tree; it prints each difference and exits 1 if any.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (name, arguments); files a command writes (--save / --trace) are recorded beside its stdout
COMMANDS = [
    ("schedule-default", ["schedule", "-f", "json"]),
    ("schedule-karras-o3-exact", ["schedule", "--spacing", "karras", "--order", "3", "--coefficients", "exact", "--steps", "12", "-f", "json"]),
    ("schedule-compat-karras", ["schedule", "--compat", "diffusers", "--spacing", "karras", "--steps", "15", "-f", "json"]),
    ("schedule-singlestep-nfe", ["schedule", "--method", "singlestep", "--order", "3", "--nfe", "20", "-f", "json"]),
    ("schedule-startup-o4", ["schedule", "--order", "4", "--startup", "singlestep", "--coefficients", "exact", "--steps", "10", "-f", "json"]),
    ("sample-default", ["sample", "-f", "json", "--save", "x.npy"]),
    ("sample-sde-o2", ["sample", "--algo", "sde-dpmsolver++", "--order", "2", "--steps", "15", "-f", "json", "--save", "x.npy"]),
    ("sample-dpmsolver-o3", ["sample", "--algo", "dpmsolver", "--order", "3", "--final-sigma", "sigma-min", "--spacing", "logsnr", "-f", "json", "--save", "x.npy"]),
    ("sample-sde-dpmsolver", ["sample", "--algo", "sde-dpmsolver", "--order", "2", "--final-sigma", "sigma-min", "--steps", "12", "-f", "json", "--save", "x.npy"]),
    ("sample-singlestep-o3", ["sample", "--method", "singlestep", "--order", "3", "--nfe", "18", "-f", "json", "--save", "x.npy"]),
    ("sample-adaptive-o3", ["sample", "--method", "adaptive", "--order", "3", "--rtol", "0.02", "-f", "json", "--save", "x.npy"]),
    ("sample-compat", ["sample", "--compat", "diffusers", "--spacing", "karras", "--order", "3", "-f", "json", "--save", "x.npy"]),
    ("sample-compat-singlestep", ["sample", "--compat", "diffusers", "--method", "singlestep", "--order", "2", "--steps", "10", "-f", "json", "--save", "x.npy"]),
    ("sample-order5", ["sample", "--order", "5", "--startup", "singlestep", "--steps", "12", "-f", "json", "--save", "x.npy"]),
    ("sample-thresholding", ["sample", "--thresholding", "--sample-max-value", "1.5", "--prediction-type", "v_prediction", "-f", "json", "--save", "x.npy"]),
    ("sample-gmm64-trace", ["sample", "--model", "gmm64", "--batch", "64", "--steps", "8", "-f", "json", "--trace", "t.npz"]),
    ("sample-digits", ["sample", "--model", "digits", "--batch", "20", "--steps", "8", "-f", "json", "--save", "x.npy"]),
    ("compare-ring", ["compare", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2,3", "--steps", "5,10", "--batch", "256", "--reference-steps", "100", "-f", "json"]),
    ("compare-methods", ["compare", "--algo", "dpmsolver++", "--order", "2,3", "--method", "multistep,singlestep,adaptive", "--steps", "6,12", "--batch", "128", "-f", "json"]),
    ("compare-digits", ["compare", "--model", "digits", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "2", "--steps", "5,10", "--batch", "20", "--reference-steps", "20", "-f", "json"]),
]


def strip_timings(value):
    """The document without what differs between two runs of the same code: timings, the cache folder."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not (k in ("seconds", "cache") or k.endswith("_seconds"))}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def record(source: Path, out: Path) -> None:
    """Run every command with the dpmcli found in ``source``; write what it printed and saved into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    for name, args in COMMANDS:
        with tempfile.TemporaryDirectory() as work:
            run_env = {**env, "DPMCLI_CACHE": str(Path(work) / "cache")}
            result = subprocess.run([sys.executable, "-m", "dpmcli", *args], cwd=work, env=run_env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{name}: exit {result.returncode}: {result.stderr.strip()}")
            document = strip_timings(json.loads(result.stdout))
            (out / f"{name}.json").write_text(json.dumps(document, sort_keys=True, indent=1) + "\n")
            for saved in sorted(Path(work).glob("*.np[yz]")):
                shutil.copyfile(saved, out / f"{name}.{saved.name}")
        print(f"recorded {name}", file=sys.stderr)


def compare(expected: Path, actual: Path) -> list[str]:
    differences = []
    names = sorted({p.name for p in expected.iterdir()} | {p.name for p in actual.iterdir()})
    for name in names:
        a, b = expected / name, actual / name
        if not a.exists() or not b.exists():
            differences.append(f"{name}: only in {'the new tree' if b.exists() else 'the recording'}")
        elif a.read_bytes() != b.read_bytes():
            differences.append(f"{name}: differs")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git commit to compare the working tree with")
    parser.add_argument("action", nargs="?", choices=("record", "check"))
    parser.add_argument("folder", nargs="?", type=Path)
    args = parser.parse_args()
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            old, before, after = Path(tmp) / "old", Path(tmp) / "before", Path(tmp) / "after"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.against], check=True, capture_output=True)
            try:
                record(old, before)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=True, capture_output=True)
            record(REPO, after)
            differences = compare(before, after)
    elif args.action == "record" and args.folder:
        record(REPO, args.folder)
        return 0
    elif args.action == "check" and args.folder:
        with tempfile.TemporaryDirectory() as tmp:
            record(REPO, Path(tmp))
            differences = compare(args.folder, Path(tmp))
    else:
        parser.error("give --against COMMIT, or record DIR / check DIR")
    for line in differences:
        print(line)
    print(f"same bytes: {len(COMMANDS)} commands, {len(differences)} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
