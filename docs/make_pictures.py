"""Make the pictures of README.md and docs/: terminal output as SVG, figures as PNG.

Run from the repository root:  python docs/make_pictures.py
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from dpmcli import SolverConfig, build_plan
from dpmcli.cli.render import sample_tables, schedule_table
from dpmcli.experiment import RunSpec, prepare, run

OUT = Path(__file__).parent / "img"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    console = Console(record=True, width=150, force_terminal=True, color_system="truecolor")
    plan = build_plan(SolverConfig(steps=10, spacing="karras", order=3))
    console.print("$ dpmcli schedule --steps 10 --spacing karras --order 3")
    console.print(schedule_table(plan))
    console.save_svg(str(OUT / "schedule.svg"), title="dpmcli schedule")

    console = Console(record=True, width=150, force_terminal=True, color_system="truecolor")
    console.print("$ dpmcli sample --steps 10")
    report = run(prepare(SolverConfig(steps=10), RunSpec(device="cpu")))
    for renderable in sample_tables(report):
        console.print(renderable)
    console.save_svg(str(OUT / "sample.svg"), title="dpmcli sample")

    figures = [
        ["plot-schedule", "--spacing", "linspace,karras,logsnr", "--steps", "10", "--out", OUT / "plot-schedule.png"],
        ["plot-schedule", "--spacing", "karras", "--steps", "300", "--compat", "diffusers", "--out", OUT / "plot-schedule-repeats.png",
         "--title", "diffusers' karras grid with 300 steps: repeated integer timesteps (red)"],
        ["plot-schedule", "--process", "flow", "--flow-shift", "1,3,6", "--steps", "10", "--out", OUT / "plot-schedule-flow-shifts.png",
         "--title", "flow grids with shift 1, 3 and 6: a shift translates lambda, h is unchanged"],
        ["sample", "--steps", "12", "--plot", OUT / "sample-run.png", "--plot-samples", OUT / "sample-samples.png", "--quiet",
         "--format", "json"],
        ["sample", "--model", "digits", "--save-images", OUT / "digits.png", "--quiet", "--format", "json"],
    ]
    for args in figures:
        subprocess.run([sys.executable, "-m", "dpmcli", *map(str, args), "--dpi", "100"], check=True, stdout=subprocess.DEVNULL)

    # compare: the two third-order forms on a logsnr grid, and the default sweep's sample panels
    with tempfile.TemporaryDirectory() as folder:
        sweep = ["compare", "--algo", "dpmsolver++,dpmsolver", "--coefficients", "published,exact", "--spacing", "logsnr",
                 "--final-sigma", "sigma-min", "--no-lower-order-final", "--steps", "10,20,40,80", "--out", folder, "--quiet"]
        subprocess.run([sys.executable, "-m", "dpmcli", *sweep, "--dpi", "100"], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(Path(folder) / "error_vs_nfe.png", OUT / "compare-orders.png")
        subprocess.run([sys.executable, "-m", "dpmcli", "compare", "--out", folder, "--quiet", "--dpi", "80"], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(Path(folder) / "samples.png", OUT / "compare-samples.png")
        # flow matching on the 64-d mixture: flow Euler (order 1) against DPM-Solver++(2M)/(3M), shift 3
        flow = ["compare", "--model", "gmm64", "--process", "flow", "--flow-shift", "3", "--algo", "dpmsolver++", "--order", "1,2,3",
                "--steps", "5,10,20,40", "--out", folder, "--quiet"]
        subprocess.run([sys.executable, "-m", "dpmcli", *flow, "--dpi", "100"], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(Path(folder) / "error_vs_nfe.png", OUT / "compare-flow.png")
        # guided digits at 5 steps: one row of samples per solver
        digits = ["compare", "--model", "digits", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2,3", "--steps", "3,5",
                  "--guidance-scale", "4", "--class", "all", "--out", folder, "--quiet"]
        subprocess.run([sys.executable, "-m", "dpmcli", *digits], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(Path(folder) / "samples.png", OUT / "compare-digits.png")
        # the flow-matching digits (digits-flow, its own flow grid) at 5 steps: flow Euler (order 1) against 2M and 3M
        flow_digits = ["compare", "--model", "digits-flow", "--algo", "dpmsolver++", "--order", "1,2,3", "--steps", "3,5",
                       "--class", "all", "--out", folder, "--quiet"]
        subprocess.run([sys.executable, "-m", "dpmcli", *flow_digits], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(Path(folder) / "samples.png", OUT / "compare-digits-flow.png")
        tuned_grid(folder)


def tuned_grid(folder) -> None:
    """The README's tuned recipe (ring, 5 model calls, UniC) drawn over three stock grids."""
    recipe = Path(folder) / "ring5.json"
    subprocess.run([sys.executable, "-m", "dpmcli", "tune", "--nfe", "5", "--corrector", "unic", "--out", recipe, "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "dpmcli", "plot-schedule", "--recipe", recipe, "--spacing", "linspace,karras,logsnr",
                    "--title", "a tuned 5-call grid (ring, DPM-Solver++(2M) with UniC) beside stock grids", "--out",
                    OUT / "tuned-grid.png", "--dpi", "100"], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
