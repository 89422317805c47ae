"""Training the ``digits`` models from scratch: the data, the classifier, the denoiser, the measurements.

``train_digits(out_dir, seed=0)`` writes the four files ``dpmcli/models/data/`` ships
(``digits.safetensors``, ``digits.json``, ``digits_classifier.safetensors``, ``digits_data.npz``);
``process="flow"`` writes ``digits-flow.safetensors`` and ``digits-flow.json`` in place of the first
two, and the same classifier and data. With the same seed, torch version and thread count it
writes the same weights on the same kind of CPU (another CPU's kernels round differently). The digits come from scikit-learn's bundled copy (nothing is
downloaded); only training needs scikit-learn.

The denoiser learns at noise levels drawn from dpmcli's own schedule (:class:`dpmcli.schedule.Schedule`
says which timesteps a network is trained at and what alpha_t, sigma_t a timestep means, exactly
as the sampler reads them): VP draws t uniformly from [0, N-1] (fractional) and regresses
epsilon; flow draws s uniformly from (0, 1], tells the network t = 1000 s and regresses the
velocity v = eps - x0; both noise as x_t = alpha_t x_0 + sigma_t eps. Class labels are replaced
by the null class with probability ``label_dropout`` so that one network is both the conditional
and the unconditional model of classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .coefficients import prediction_of
from .config import SolverConfig
from .errors import ConfigError
from .models import digits as D
from .report import atomic_write, dumps_json
from .schedule import Schedule
from .vocabulary import schedule_options, scheduler_words

Progress = Callable[[str, int, "int | None"], None]
"""``progress(stage, done, total)``: stage is "classifier", "denoiser" or "evaluation"."""

HELD_OUT = 297  # 1797 digits: 1500 to train on, 297 held out
SPLIT_SEED = 0
# the digits model's training schedule, kept in its JSON in diffusers' words
DEFAULT_SCHEDULE = scheduler_words(
    {"train_steps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "spacing": "linspace"}
)
# the digits-flow model's: rectified flow over 1000 timesteps, velocity prediction, sampled unshifted
FLOW_SCHEDULE = scheduler_words({"train_steps": 1000, "process": "flow", "flow_shift": 1.0, "prediction_type": "flow_prediction"})
SCHEDULES = {"vp": DEFAULT_SCHEDULE, "flow": FLOW_SCHEDULE}
PREDICTIONS = {"vp": "epsilon", "flow": "flow_prediction"}  # what each process's denoiser is trained to output
LOSSES = {
    "epsilon": "MSE of epsilon, timesteps uniform in [0, N-1] (fractional)",
    "flow_prediction": "MSE of the velocity v = eps - x0 on x_s = (1 - s) x0 + s eps, s uniform in (0, 1], timestep 1000 s (fractional)",
}
# denoiser iterations of each process's shipped recipe: the flow model's were chosen by its loss on the
# held-out digits (docs/digits.md: 10,000 iterations copy training digits; 1,250 fail the quality floors)
ITERATIONS = {"vp": 10000, "flow": 2500}
EVALUATION = {"algo": "dpmsolver++", "order": 2, "steps": 20, "batch": 500, "seed": 0}
GUIDANCE_SCALES = (1.0, 2.0, 4.0)
FLOOR_MARGIN = {"class_accuracy": 0.05, "classifier_confidence": 0.05, "classifier_heldout_accuracy": 0.02}
DATASET = (
    "UCI Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak, 1998), "
    "the test set as bundled with scikit-learn (sklearn.datasets.load_digits); CC BY 4.0"
)


@dataclass(frozen=True)
class DenoiserRecipe:
    """How the denoiser is built and trained: its size and the optimiser's settings (the shipped defaults)."""

    hidden: int = 512
    blocks: int = 3
    embedding: int = 128
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1


# --------------------------------------------------------------------------- data


def load_sklearn_digits() -> D.DigitsData:
    """scikit-learn's bundled digits with dpmcli's fixed held-out split (no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError('training the digits model needs scikit-learn: pip install "dpmcli[train]"') from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    if images.min() < 0 or images.max() > D.PIXEL_MAX:
        raise ConfigError("scikit-learn's digits are not in 0..16 as expected")
    images = images.astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.uint8)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    test = np.zeros(len(labels), dtype=bool)
    test[order[:HELD_OUT]] = True
    return D.DigitsData(images, labels, test)


@contextlib.contextmanager
def _threads(count: int | None):
    """Fix torch's CPU thread count (results depend on it) and restore it afterwards."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(n: int, size: int, generator: torch.Generator):
    """Endless shuffled epochs of indices; the last partial batch of an epoch is dropped."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


# --------------------------------------------------------------------------- classifier


def train_classifier(
    data: D.DigitsData, *, seed: int = 0, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3,
    progress: Progress | None = None, threads: int | None = 2,
) -> tuple[D.DigitsClassifier, dict]:
    """Train the quality classifier on the training digits; returns it (float16-rounded) and its record."""
    x, y = data.split(held_out=False)
    x_test, y_test = data.split(held_out=True)
    start = time.perf_counter()
    with _threads(threads), torch.random.fork_rng():
        torch.manual_seed(seed)
        net = D.DigitsClassifier()
        generator = torch.Generator().manual_seed(seed + 1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        per_epoch = len(x) // batch_size
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * per_epoch)
        batches = _batches(len(x), batch_size, generator)
        net.train()
        for epoch in range(epochs):
            for _ in range(per_epoch):
                idx = next(batches)
                xb = x[idx]
                # one-pixel shifts and a little pixel noise make it judge samples, not memorise digits
                shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
                xb = torch.roll(xb, shifts=shift, dims=(2, 3)) if any(shift) else xb
                xb = (xb + 0.1 * torch.randn(xb.shape, generator=generator)).clamp(-1, 1)
                loss = F.cross_entropy(net(xb), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if progress is not None:
                progress("classifier", epoch + 1, epochs)
    net = D.round_to_stored(net).eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    real = D.score(net, x_test, y_test, x)
    record = {
        "architecture": {"type": "cnn", "channels": 32, "hidden": 128, "parameters": sum(p.numel() for p in net.parameters())},
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "augmentation": "random one-pixel roll, Gaussian pixel noise 0.1",
        "seed": seed,
        "seconds": round(seconds, 1),
        "heldout_accuracy": real["class_accuracy"],
        "heldout_confidence": real["classifier_confidence"],
    }
    return net, record


# --------------------------------------------------------------------------- denoiser


def noise_levels(schedule: Schedule, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) at fractional timesteps as the schedule reads them (VP: its lambda interpolation), float32."""
    alpha, sigma = schedule.noise_levels(timesteps)
    return alpha.float(), sigma.float()


def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), net.parameters()):
            e.lerp_(p, 1.0 - decay)


def train_denoiser(
    data: D.DigitsData, schedule: Schedule, recipe: DenoiserRecipe = DenoiserRecipe(), *, seed: int = 0,
    iterations: int = 10000, minutes: float | None = None, progress: Progress | None = None, threads: int | None = 2,
    prediction_type: str = "epsilon",
) -> tuple[D.DigitsNet, dict]:
    """Train the denoiser to output ``prediction_type`` on ``schedule``'s path; returns its EMA weights (float16-rounded) and its record."""
    batch_size, lr, warmup = recipe.batch_size, recipe.lr, recipe.warmup
    ema_decay, label_dropout = recipe.ema_decay, recipe.label_dropout
    x, y = data.split(held_out=False)
    deadline = None if minutes is None else time.perf_counter() + 60.0 * minutes
    start = time.perf_counter()
    losses: list[float] = []
    with _threads(threads), torch.random.fork_rng():
        torch.manual_seed(seed)
        net = D.DigitsNet(recipe.hidden, recipe.blocks, recipe.embedding)
        ema = copy.deepcopy(net).requires_grad_(False)
        generator = torch.Generator().manual_seed(seed + 1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)

        def factor(i: int) -> float:  # linear warm-up, then cosine decay to a tenth
            if i < warmup:
                return (i + 1) / warmup
            progress_ = (i - warmup) / max(iterations - warmup, 1)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        batches = _batches(len(x), batch_size, generator)
        done = 0
        net.train()
        for i in range(iterations):
            if deadline is not None and time.perf_counter() > deadline:
                break
            idx = next(batches)
            x0, labels = x[idx], y[idx].clone()
            labels[torch.rand(batch_size, generator=generator) < label_dropout] = D.NULL_CLASS
            t = schedule.training_timesteps(torch.rand(batch_size, generator=generator, dtype=torch.float64))
            alpha, sigma = (v[:, None, None, None] for v in noise_levels(schedule, t))
            eps = torch.randn(x0.shape, generator=generator)
            xt = alpha * x0 + sigma * eps
            loss = F.mse_loss(net(xt, t.float(), labels), prediction_of(prediction_type, x0, eps, alpha, sigma))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            _ema_update(ema, net, min(ema_decay, (1 + i) / (10 + i)))
            losses.append(loss.item())
            done = i + 1
            if progress is not None:
                progress("denoiser", done, iterations)
    if done == 0:
        raise ConfigError("--minutes: the time ran out before the first iteration; allow more time")
    ema = D.round_to_stored(ema).eval()
    record = {
        "iterations": done,
        "iterations_planned": iterations,
        "minutes_limit": minutes,
        "batch_size": batch_size,
        "optimizer": "AdamW, weight decay 0",
        "lr": lr,
        "lr_schedule": f"linear warm-up over {warmup} iterations, then cosine decay to lr/10 at iteration {iterations}",
        "ema_decay": ema_decay,
        "label_dropout": label_dropout,
        "loss": LOSSES.get(prediction_type, f"MSE of {prediction_type}"),
        "final_loss_mean_last_200": float(np.mean(losses[-200:])),
        "seed": seed,
        "threads": threads,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return ema, record


# --------------------------------------------------------------------------- evaluation


def evaluate(folder: Path, guidance_scales=GUIDANCE_SCALES, progress: Progress | None = None, process: str = "vp", **setup) -> dict:
    """Quality of the written model at the evaluation setup: unconditional and class "all" per guidance scale."""
    setup = {**EVALUATION, **setup}
    runs = [("unconditional", None, None)] + [(f"guidance_{s:g}", "all", s) for s in guidance_scales]
    out = {}
    for k, (key, label, scale) in enumerate(runs):
        model = D.load_digits_model(folder, class_label=label, guidance_scale=scale, process=process)
        samples = D.sample_digits(model, setup["batch"], seed=setup["seed"], steps=setup["steps"], algo=setup["algo"], order=setup["order"])
        quality = model.quality(samples)
        out[key] = {k2: v for k2, v in quality.items() if not k2.startswith("real_")}
        if progress is not None:
            progress("evaluation", k + 1, len(runs))
    return {"setup": setup, "runs": out}


def measure_model(
    folder: Path, classifier_record: dict, *, batch: int = EVALUATION["batch"], progress: Progress | None = None,
    threads: int | None = 2, process: str = "vp",
) -> dict:
    """``{"quality": ..., "floors": ...}`` of the model in ``folder``: :func:`evaluate`, and the test floors set from it."""
    with _threads(threads):
        quality = evaluate(folder, progress=progress, process=process, batch=batch)
    return {"quality": quality, "floors": _floors(classifier_record, quality)}


def _floors(classifier: dict, quality: dict) -> dict:
    m = FLOOR_MARGIN
    floors = {"margins": dict(m), "classifier_heldout_accuracy": round(classifier["heldout_accuracy"] - m["classifier_heldout_accuracy"], 4)}
    for key, run in quality["runs"].items():
        floors[key] = {"classifier_confidence": round(run["classifier_confidence"] - m["classifier_confidence"], 4)}
        if run["class_accuracy"] is not None:
            floors[key]["class_accuracy"] = round(run["class_accuracy"] - m["class_accuracy"], 4)
    return floors


def train_digits(
    out_dir: str | Path,
    *,
    process: str = "vp",
    seed: int = 0,
    iterations: int | None = None,
    minutes: float | None = None,
    schedule: dict | None = None,
    classifier_epochs: int = 40,
    hidden: int = DenoiserRecipe.hidden,
    blocks: int = DenoiserRecipe.blocks,
    embedding: int = DenoiserRecipe.embedding,
    batch_size: int = DenoiserRecipe.batch_size,
    lr: float = DenoiserRecipe.lr,
    guidance_scale: float = 2.0,
    evaluation_batch: int = EVALUATION["batch"],
    progress: Progress | None = None,
    threads: int | None = 2,
) -> dict:
    """Train the digits classifier and denoiser from scratch and write the model's four files.

    ``process``: "vp" (the ``digits`` model, epsilon) or "flow" (``digits-flow``, rectified flow);
    ``iterations`` of the denoiser: None is the process's shipped recipe (``ITERATIONS``);
    ``schedule`` overrides words of its scheduler config (``SCHEDULES[process]``). Returns the
    ``digits.json`` (``digits-flow.json``) document (recipe, timings, measured quality). Files are written
    into a staging folder inside ``out_dir`` and moved into place when all are measured, the JSON
    last. ``hidden``, ``blocks``, ``embedding``, ``batch_size`` and ``lr`` are the denoiser's
    :class:`DenoiserRecipe`.
    """
    out = Path(out_dir)
    _check_out(out)
    if iterations is None:
        iterations = ITERATIONS.get(process, ITERATIONS["vp"])  # an unknown process is refused by the checks next
    sched, cfg = _checked_options(schedule, process=process, seed=seed, iterations=iterations, minutes=minutes)
    recipe = DenoiserRecipe(hidden=hidden, blocks=blocks, embedding=embedding, batch_size=batch_size, lr=lr)
    data = load_sklearn_digits()
    started = time.perf_counter()
    classifier, classifier_record = train_classifier(data, seed=seed, epochs=classifier_epochs, progress=progress, threads=threads)
    net, record = train_denoiser(
        data, Schedule.from_config(cfg), recipe, seed=seed, iterations=iterations, minutes=minutes, progress=progress,
        threads=threads, prediction_type=cfg.prediction_type,
    )
    document = model_document(
        data, classifier=classifier, classifier_record=classifier_record, net=net, record=record,
        scheduler=sched, guidance_scale=guidance_scale, name=D.VARIANTS[process],
    )

    def measure(staging: Path) -> None:  # the staged model's quality and floors, then the time it all took
        measured = measure_model(staging, classifier_record, batch=evaluation_batch, progress=progress, threads=threads, process=process)
        document.update(measured)
        document["total_seconds"] = round(time.perf_counter() - started, 1)

    write_model(out, net=net, classifier=classifier, data=data, document=document, measure=measure, process=process)
    return document


def _checked_options(schedule: dict | None, *, process, seed, iterations, minutes) -> tuple[dict, SolverConfig]:
    """The run's options checked up front: the scheduler words (shipped defaults filled in) and their config."""
    if process not in SCHEDULES:
        raise ConfigError(f"--process: {process!r} is not allowed for train digits; choose one of: {', '.join(SCHEDULES)}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed: {seed!r} is not allowed; it must be an integer >= 0")
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise ConfigError(f"--minutes: {minutes!r} is not allowed; it must be a positive number")
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"--iterations: {iterations!r} is not allowed; it must be a positive integer")
    sched = {**SCHEDULES[process], **(schedule or {})}
    try:
        cfg = SolverConfig(**schedule_options(sched, where="training schedule")).validated()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training schedule: {exc}") from None
    if cfg.process != process:
        raise ConfigError(f"training schedule: it describes --process {cfg.process}, not --process {process}")
    if cfg.prediction_type != PREDICTIONS[process]:
        wanted = PREDICTIONS[process]
        raise ConfigError(f"training schedule: the {D.VARIANTS[process]} model predicts {wanted}; prediction_type must be {wanted!r}")
    return sched, cfg


def model_document(
    data: D.DigitsData, *, classifier: D.DigitsClassifier, classifier_record: dict, net: D.DigitsNet, record: dict,
    scheduler: dict, guidance_scale: float, name: str = "digits",
) -> dict:
    """The ``digits.json`` document (``name``'s) before evaluation: architecture, scheduler, data, training records, real digits."""
    x_train, _ = data.split(held_out=False)
    x_test, y_test = data.split(held_out=True)
    real = D.score(classifier, x_test, y_test, x_train)
    return {
        "format": 1,
        "model": name,
        "architecture": net.architecture,
        "scheduler": scheduler,
        "data": {
            "source": DATASET,
            "pixels": "integers 0..16, scaled to [-1, 1] as x / 8 - 1; latents (batch, 1, 8, 8)",
            "digits": len(data.labels),
            "train": int((~data.test).sum()),
            "held_out": int(data.test.sum()),
            "split": f"numpy default_rng({SPLIT_SEED}).permutation: the first {HELD_OUT} are held out",
        },
        "training": {**record, "torch": torch.__version__.split("+")[0]},
        "classifier": classifier_record,
        "real": {k: real[k] for k in ("classifier_confidence", "class_accuracy", "nn_distance")},
        "sampling": {"class_label": "all", "guidance_scale": float(guidance_scale)},
    }


def write_model(
    out: Path, *, net: D.DigitsNet, classifier: D.DigitsClassifier, data: D.DigitsData, document: dict,
    measure: Callable[[Path], None] | None = None, process: str = "vp",
) -> None:
    """Write the model's four files into ``out``: staged in a folder inside it, measured, then moved, the JSON last.

    ``measure(staging)`` runs once the staged files load as a model; what it adds to ``document``
    is in the final JSON. A failed or interrupted run leaves nothing: neither the staging folder
    nor the folders it made.
    """
    created = None  # the outermost folder this run makes, removed if it fails
    if not out.exists():
        created = out
        while not created.parent.exists():
            created = created.parent
    finished, staging = False, None
    try:
        out.mkdir(parents=True, exist_ok=True)  # only now: a failed or interrupted run leaves nothing
        staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=out))
        weights_file, config_file, classifier_file, data_file = D.model_files(process)
        D.save_weights(net, staging / weights_file)
        D.save_weights(classifier, staging / classifier_file)
        data.save(staging / data_file)
        _write_json(staging / config_file, document)  # lets the evaluation load the staged model
        if measure is not None:
            measure(staging)
        _write_json(staging / config_file, document)
        for name in (weights_file, classifier_file, data_file, config_file):  # the JSON last
            os.replace(staging / name, out / name)
        finished = True
    except OSError as exc:  # a full disk, a folder that went away: the environment, not a bug
        raise ConfigError(f"--out: cannot write into {out}: {exc.strerror or exc}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created is not None and not finished:
            shutil.rmtree(created, ignore_errors=True)  # the folders this run made go with it


def _check_out(out: Path) -> None:
    """Fail before the minutes of training if the folder could not be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: cannot write into {existing}")


def _write_json(path: Path, document: dict) -> None:
    text = dumps_json(document)
    json.loads(text)  # fails loudly rather than writing something unreadable
    atomic_write(path, lambda handle: handle.write(text.encode()))
