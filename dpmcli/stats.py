"""Per-step statistics of latents and predictions, and summaries of final samples."""

from __future__ import annotations

import functools
import math

import torch

from .errors import NumericalError

STAT_KEYS = ("mean", "std", "min", "max", "norm")


def tensor_stats(t: torch.Tensor) -> dict:
    """mean, std, min, max over all entries; norm = mean per-sample L2 norm; nonfinite = count of NaN/Inf."""
    flat = t.detach().reshape(t.shape[0], -1).double()
    finite = torch.isfinite(flat)
    nonfinite = int((~finite).sum().item())
    if nonfinite:
        flat = torch.where(finite, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
    std = flat.std().item() if flat.numel() > 1 else 0.0
    return {
        "mean": flat.mean().item(),
        "std": std,
        "min": flat.min().item(),
        "max": flat.max().item(),
        "norm": flat.norm(dim=1).mean().item(),
        "nonfinite": nonfinite,
    }


def log_prob_chunked(mixture, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``mixture.log_prob(x)`` evaluated ``chunk`` rows at a time, so large batches stay within memory."""
    return torch.cat([mixture.log_prob(part) for part in torch.split(x, chunk)])


@functools.lru_cache(maxsize=16)
def expected_log_likelihood(mixture, reference_count: int = 100_000, seed: int = 12345) -> tuple[float, float]:
    """(E_p0[log p0], its standard error): a seeded Monte Carlo estimate, computed once per mixture.

    A mixture's entropy has no closed form; ``reference_count`` draws from a CPU generator
    seeded with ``seed`` make the estimate the same in every run.
    """
    ref = log_prob_chunked(mixture, mixture.sample(reference_count, torch.Generator().manual_seed(seed)))
    return ref.mean().item(), (ref.std() / math.sqrt(reference_count)).item()


def mixture_summary(mixture, samples: torch.Tensor, reference_count: int = 100_000, seed: int = 12345) -> dict:
    """How well final samples match the exact mixture: log-likelihood and share per component.

    The expected log-likelihood E_p0[log p0] has no closed form for a mixture; it is a seeded
    Monte Carlo estimate, reported with its standard error.
    """
    x = samples.detach().double().cpu()
    log_p = log_prob_chunked(mixture, x)
    expected, stderr = expected_log_likelihood(mixture, reference_count, seed)
    counts = torch.bincount(mixture.component_of(x), minlength=mixture.components).double()
    shares = (counts / counts.sum()).tolist()
    weights = [float(w) for w in mixture.weights]
    summary = {
        "mean_log_likelihood": log_p.mean().item(),
        "expected_log_likelihood": expected,
        "expected_log_likelihood_stderr": stderr,
        "component_shares": shares,
        "component_weights": weights,
        "share_total_variation": 0.5 * sum(abs(s - w) for s, w in zip(shares, weights)),
    }
    broken = [key for key, value in summary.items() if not all(map(math.isfinite, value if isinstance(value, list) else [value]))]
    if broken:  # a summary is never a NaN that reads as a result
        raise NumericalError(f"mixture summary: {', '.join(broken)} is not finite (mixture {mixture.name!r})")
    return summary


class StepStatistics:
    """A sampler callback: one row per step with the plan's columns and statistics of x and x0.

    The latent statistics describe x at the step's noise level (the input the model saw).
    """

    def __init__(self):
        self.rows: list[dict] = []

    def __call__(self, event) -> None:
        row = event.info()
        latent = tensor_stats(event.x)
        x0 = tensor_stats(event.x0())
        row.update({k: latent[k] for k in STAT_KEYS})
        row.update({f"x0_{k}": x0[k] for k in STAT_KEYS})
        row["nonfinite"] = latent["nonfinite"] + x0["nonfinite"]
        self.rows.append(row)

