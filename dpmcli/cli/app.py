"""The Typer application itself, the registration of its commands, and the options several commands share."""

from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer

from .. import __version__
from .console import DpmcliGroup
from .options import OUTPUT

EXIT_CODES_HELP = (
    "Exit codes: 0 ok · 1 a compare gate failed · 2 usage or configuration error · "
    "3 numerical failure (NaN/Inf) · 4 internal error · 130 interrupted (Ctrl-C) · 143 terminated (SIGTERM)."
)

app = typer.Typer(
    name="dpmcli",
    cls=DpmcliGroup,
    help="Understand, choose and guard DPM-Solver diffusion samplers.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Format = Annotated[str, typer.Option("--format", "-f", help="table, json or csv.", rich_help_panel=OUTPUT)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no warnings.", rich_help_panel=OUTPUT)]
Dpi = Annotated[int, typer.Option("--dpi", help="Resolution of .png figures.", rich_help_panel=OUTPUT)]

def command(name: str | None = None):
    """Register a command; its docstring's paragraphs are reflowed (Typer would keep each line break)."""

    def register(function):
        paragraphs = inspect.cleandoc(function.__doc__ or "").split("\n\n")
        text = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)
        return app.command(name, help=text, epilog=EXIT_CODES_HELP)(function)

    return register


def _show_version(value: bool) -> None:
    if value:
        print(f"dpmcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print dpmcli's version and exit.")
    ] = False,
) -> None:
    """The options of dpmcli itself (the commands have their own)."""


MODEL_HELP = (
    "ring (2-D, 8 Gaussians), gmm64 (64-D, 10 Gaussians), gmm:PATH.json (exact mixtures); digits (shipped network, "
    "8x8 digits), digits:DIR (trained by `dpmcli train digits`); digits-flow, digits-flow:DIR (the same network trained "
    "by rectified flow, `--process flow`); diffusers:PATH (a folder saved by diffusers -- DDPM, Stable Diffusion 1.x/2.x and XL, PixArt-Sigma, SD3, Flux, Sana -- or a hub id already in the local cache)."
)
CONDITIONING = "Conditioning (real models)"
ClassLabel = Annotated[
    Optional[str],
    typer.Option("--class", help="digits: the digit to draw (0-9), 'all' (each in turn) or 'none' (unconditional).", show_default="all", rich_help_panel=CONDITIONING),
]
GuidanceScale = Annotated[
    Optional[float],
    typer.Option(
        "--guidance-scale",
        help="Classifier-free guidance u + s (c - u): 1 = the conditional model alone, larger = stronger guidance.",
        show_default="digits 2, text models 7.5", rich_help_panel=CONDITIONING,
    ),
]
Prompt = Annotated[Optional[str], typer.Option("--prompt", help="Text-conditioned diffusers pipelines: the prompt.", rich_help_panel=CONDITIONING)]
NegativePrompt = Annotated[
    Optional[str], typer.Option("--negative-prompt", help="Text pipelines: what guidance steers away from.", rich_help_panel=CONDITIONING)
]
Height = Annotated[Optional[int], typer.Option("--height", help="Latent-diffusion pipelines: image height in pixels.", rich_help_panel=CONDITIONING)]
Width = Annotated[Optional[int], typer.Option("--width", help="Latent-diffusion pipelines: image width in pixels.", rich_help_panel=CONDITIONING)]
AllowDownload = Annotated[
    bool,
    typer.Option("--allow-download", help="diffusers hub ids: fetch files missing from the local cache (off: never touch the network).", rich_help_panel=CONDITIONING),
]


def sweep_option(flag: str, what: str, default: str, panel: str = "Sweep"):
    return typer.Option(flag, help=f"{what}; comma list or repeat.", show_default=f"{default}", rich_help_panel=panel)


SweepList = Optional[list[str]]
