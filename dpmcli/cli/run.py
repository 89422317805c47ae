"""``dpmcli sample``: prepare, run with a progress bar, render, then write files."""

from __future__ import annotations

import sys

import torch

from .. import experiment
from ..errors import ConfigError
from ..images import save_image_grid
from ..report import OutputFiles, dumps_json, save_npy
from ..trace import Trace
from .console import stdout_console, warn
from .options import recipe_note, require_suffix, use_recipe
from .plotting import check_sample_outputs, print_written, write_sample_outputs
from .render import config_line, sample_tables


def run_sample(
    *, config, explicit=frozenset(), model_name, recipe=None, conditioning=None, batch, seed, device_name, dtype_name, x_init, noise_path,
    save, save_images=None, plot, plot_samples, trace, trace_stride, dpi, fmt, quiet, progress, progress_enabled,
):
    require_suffix("--save", save, ".npy")
    require_suffix("--save-images", save_images, ".png")
    check_sample_outputs(plot, plot_samples, trace, trace_stride, dpi)
    outputs = OutputFiles({"--save": save, "--save-images": save_images, "--plot": plot, "--plot-samples": plot_samples, "--trace": trace})
    found = None
    if recipe is not None:
        found, config, model_name, conditioning = use_recipe(recipe, config, explicit, model_name, conditioning)
    model_name = model_name or "ring"
    spec = experiment.RunSpec(model_name, batch, seed, device_name, dtype_name, x_init, noise_path, **(conditioning or {}))
    prepared = experiment.prepare(config, spec, explicit, recipe=found)
    if found is not None:
        prepared.warnings.insert(0, recipe_note(found))
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
    with outputs:
        if save is not None:
            samples = report.result.samples.detach().cpu()
            if samples.dtype not in (torch.float32, torch.float64):  # half types are written as float32
                samples = samples.float()
            save_npy(save, samples.numpy())
        write_sample_outputs(
            report, trace_recorder=recorder, plot=plot, plot_samples=plot_samples, trace=trace, dpi=dpi,
            title=config_line(prepared.plan.config),
        )
        if save_images is not None:
            images = prepared.model.to_images(report.result.samples)
            save_image_grid(save_images, images, columns=prepared.model.grid_columns)
    if fmt == "json":
        sys.stdout.write(dumps_json(report.document()))
    else:
        console = stdout_console()
        for renderable in sample_tables(report):
            console.print(renderable)
    print_written(outputs.written, quiet)
