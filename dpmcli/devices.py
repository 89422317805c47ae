"""Device and dtype resolution with one-line errors."""

from __future__ import annotations

import math
import os

import torch

from .errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError("--device: 'mps' is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device: {name!r} asked for, but no CUDA device is available; use --device cpu or auto")
        index = name[5:]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise ConfigError(
                    f"--device: {name!r} does not exist; this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}"
                )
        return torch.device(name)
    raise ConfigError(f"--device: {name!r} is not allowed; choose one of: {DEVICE_CHOICES}")


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (None where it cannot be told)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return None


def check_batch_memory(model, batch: int, device: torch.device) -> None:
    """Refuse a batch whose working set alone would not fit, before any of it is allocated.

    The estimate is a floor (sixteen float64 copies of the latents, and a mixture's per-component
    posterior terms); a batch that passes can still run out, which the command line reports too.
    """
    numel = math.prod(model.sample_shape)
    components = model.mixture.components if model.mixture is not None else 0
    need = batch * numel * 8 * (16 + 4 * components)
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"--batch: {batch} samples need at least {need / 2**30:.3g} GiB on {device}, which has "
            f"{free / 2**30:.3g} GiB free; use a smaller --batch"
        )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"--dtype: {name!r} is not allowed; choose one of: {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    try:  # a tiny probe: some devices lack a dtype (float64 on mps, half on old CPUs)
        probe = torch.ones(4, device=device, dtype=dtype)
        (probe * 0.5 + probe).sum().item()
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--dtype: {name} is not supported on {device} ({str(exc).splitlines()[0]})") from None
    return dtype
