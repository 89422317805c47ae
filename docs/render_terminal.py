"""Render what `dpmcli schedule` and `dpmcli sample` print into SVG pictures for the docs.

Run from the repository root:  python docs/render_terminal.py
"""

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


if __name__ == "__main__":
    main()
