"""``dpmcli sample``: prepare, run with a progress bar, render, then write files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError


def check_writable(option: str, path: Path, suffix: str | None = None) -> None:
    """Fail before any work if an output file could not be written."""
    if suffix is not None and path.suffix != suffix:
        raise ConfigError(f"{option}: {path} must end in {suffix}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{option}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{option}: folder {parent} is not writable")
    if path.is_dir():
        raise ConfigError(f"{option}: {path} is a folder")


def run_sample(
    *, config, explicit=frozenset(), model_name, conditioning=None, batch, seed, device_name, dtype_name, x_init, noise_path,
    save, save_images=None, plot, plot_samples, trace, trace_stride, dpi, fmt, quiet, progress, progress_enabled,
):
    import torch

    from .. import experiment
    from ..report import dumps_json, save_npy
    from ..trace import Trace
    from .console import stdout_console, warn
    from .plotting import check_sample_outputs, print_written, write_sample_outputs

    if save is not None:
        check_writable("--save", save, ".npy")
    if save_images is not None:
        check_writable("--save-images", save_images, ".png")
    check_sample_outputs(plot, plot_samples, trace, trace_stride, dpi)
    spec = experiment.RunSpec(model_name, batch, seed, device_name, dtype_name, x_init, noise_path, **(conditioning or {}))
    prepared = experiment.prepare(config, spec, explicit)
    if plot_samples is not None and (prepared.model.mixture is None or prepared.model.dims != 2):
        raise ConfigError(
            f"--plot-samples: model {model_name!r} is not a 2-D mixture; sample plots need one such as ring"
            + (" (use --save-images for image models)" if prepared.model.has_images else "")
        )
    if save_images is not None and not prepared.model.has_images:
        raise ConfigError(f"--save-images: model {model_name!r} has no images to show (no decoder, or points); use --save")
    warn(prepared.warnings, quiet)
    recorder = None
    if trace is not None or plot_samples is not None:
        recorder = Trace(stride=trace_stride, keep_all=trace is not None, trajectories=12 if plot_samples is not None else 0)
    config = prepared.plan.config
    with progress(prepared.plan.nfe or None, f"{config.algo} order {config.order}", progress_enabled) as advance:
        report = experiment.run(prepared, on_step=advance, extra=() if recorder is None else (recorder,))
    if save is not None:
        samples = report.result.samples.detach().cpu()
        if samples.dtype not in (torch.float32, torch.float64):  # half types are written as float32
            samples = samples.float()
        save_npy(save, samples.numpy())
    from .render import config_line

    written = write_sample_outputs(report, recorder, plot, plot_samples, trace, dpi, config_line(prepared.plan.config))
    if save_images is not None:
        from ..images import save_image_grid

        images = prepared.model.to_images(report.result.samples)
        save_image_grid(save_images, images, columns=prepared.model.grid_columns)
        written.append(save_images)
    if fmt == "json":
        sys.stdout.write(dumps_json(report.document()))
        print_written(([save] if save is not None else []) + written, quiet)
        return
    from .render import sample_tables

    console = stdout_console()
    for renderable in sample_tables(report):
        console.print(renderable)
    print_written(([save] if save is not None else []) + written, quiet)

