"""``compare`` on several processes launched by ``torchrun``: one rank per device, every run's samples split.

A sweep runs on all ranks at once. Every rank draws the whole x_T (and the whole Brownian path)
from the seed, runs its own contiguous block of samples, and the blocks are gathered in rank
order, so every rank ends each run with the samples a single process would have (round-off
aside) and computes the same scores; rank 0 alone prints and writes. Splitting the samples of
every run (rather than handing whole runs to ranks) keeps the ranks finishing together and
makes the reference solutions parallel too. Nothing here starts processes: ``torchrun`` (or
``srun``) does, and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import EXIT_INTERNAL, ConfigError, DpmcliError, NumericalError
from .sampler import RunResult

# How long a rank waits for the others in one collective before the job fails (seconds): a
# reference solution on a large batch can take minutes, a dead rank should not hang a job for hours.
DEFAULT_TIMEOUT = 1800
ENV_TIMEOUT = "DPMCLI_DIST_TIMEOUT"


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this rank prints and writes the outputs (rank 0)."""
        return self.rank == 0

    def shard(self, count: int) -> slice:
        """This rank's contiguous block of ``count`` samples (blocks differ in size by at most one)."""
        return slice(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def gather(self, value):
        """Every rank's ``value`` (picklable) in rank order; ``[value]`` in a single process."""
        if not self.active:
            return [value]
        out = [None] * self.world
        with self._peers():
            torch.distributed.all_gather_object(out, value)
        return out

    @contextlib.contextmanager
    def _peers(self):
        """A collective whose peer died is this rank's error too, said in one line (the peer says why)."""
        try:
            yield
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[source.cc:553]" prefix
            raise JobError(f"rank {self.rank}: another rank of the job stopped ({first[:160]}); its own error line says why") from None

    def gather_rows(self, block: torch.Tensor) -> torch.Tensor:
        """The blocks of every rank, concatenated in rank order, as a CPU tensor on every rank."""
        if not self.active:
            return block.detach().cpu()
        return torch.cat([part for part in self.gather(block.detach().cpu())], dim=0)

    def from_writer(self, value):
        """Rank 0's ``value`` on every rank (a decision taken once, e.g. a cache lookup)."""
        if not self.active:
            return value
        box = [value if self.writer else None]
        with self._peers():
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.active:
            with self._peers():
                torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


SINGLE = Ranks()


class JobError(DpmcliError):
    """Another rank of a torchrun job failed while this one waited for it (exit code 4)."""

    exit_code = EXIT_INTERNAL


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return _integer("WORLD_SIZE", 1) > 1


def from_environment(device_kind: str) -> Ranks:
    """Join the job torchrun describes in the environment; a single process without it.

    ``device_kind`` is "cuda" (NCCL, one GPU per rank: cuda:LOCAL_RANK) or "cpu" (gloo).
    """
    world = _integer("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    ranks = Ranks(rank=_integer("RANK", 0), world=world, local_rank=_integer("LOCAL_RANK", 0))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"rank {ranks.rank}: {name} is not set; launch with torchrun (or srun with its rendezvous variables)")
    timeout = datetime.timedelta(seconds=_integer(ENV_TIMEOUT, DEFAULT_TIMEOUT))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    try:
        if device_kind == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        with _quiet_native_stderr():  # c10d logs C++ stack frames of a failed connection before raising
            torch.distributed.init_process_group(backend, rank=ranks.rank, world_size=world, timeout=timeout)
    except (RuntimeError, ValueError, OSError) as exc:
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"rank {ranks.rank}: cannot reach the torchrun rendezvous at {where} ({reason})") from None
    return ranks


@contextlib.contextmanager
def _quiet_native_stderr():
    """File descriptor 2 sent to /dev/null for the duration (what native code writes there, too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _integer(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"torchrun: {name}={value!r} is not an integer") from None


class ShardNoise:
    """A noise source for this rank's block: the whole batch's noise, drawn as one process would, then sliced."""

    def __init__(self, source: Callable, rows: slice, shape: tuple[int, ...]):
        self.source, self.rows, self.shape = source, rows, tuple(shape)
        self._like: torch.Tensor | None = None

    def __call__(self, step: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if self._like is None or self._like.dtype != like.dtype or self._like.device != like.device:
            self._like = torch.empty(self.shape, dtype=like.dtype, device=like.device)
        return self.source(step, self._like, scale)[self.rows]


def run_split(ranks: Ranks, run: Callable, x: torch.Tensor, noise: Callable | None = None):
    """``run(x_block, noise_block, first_row) -> RunResult`` on this rank's block; the whole batch's RunResult on every rank.

    ``first_row`` is where the block starts (for ``Denoiser.for_rows``). A single process runs the
    whole batch (``run(x.clone(), noise, 0)``), as before. Under torchrun a
    NumericalError on any rank is raised on every rank, naming the first rank that failed; the
    time is the slowest rank's.
    """
    if not ranks.active:
        return run(x.clone(), noise, 0)
    rows = ranks.shard(x.shape[0])
    try:
        result = run(x[rows].clone(), None if noise is None else ShardNoise(noise, rows, tuple(x.shape)), rows.start)
        mine = (result.samples.detach().cpu(), result.seconds, result.nfe, None)
    except NumericalError as exc:
        mine = (None, None, None, f"rank {ranks.rank}: {exc}")
    parts = ranks.gather(mine)
    failed = [part[3] for part in parts if part[3] is not None]
    if failed:
        raise NumericalError(failed[0])
    samples = torch.cat([part[0] for part in parts], dim=0).to(x.device)
    return RunResult(samples=samples, nfe=parts[0][2], seconds=max(part[1] for part in parts))


def cached_across(ranks: Ranks, cache, description: dict, arrays, compute: Callable, **expect) -> torch.Tensor:
    """``cache.get_or_compute`` with one decision for the job: rank 0 reads (and writes) the cache; on a
    miss every rank takes part in ``compute()`` (which gathers its blocks), on a hit rank 0 sends the value."""
    if not ranks.active:
        return cache.get_or_compute(description, arrays, compute, **expect)
    if not ranks.writer:
        kind, value = ranks.from_writer(None)
        return compute() if kind == "miss" else value
    computed = []

    def on_miss():
        ranks.from_writer(("miss", None))
        computed.append(True)
        return compute()

    value = cache.get_or_compute(description, arrays, on_miss, **expect)
    if not computed:
        ranks.from_writer(("hit", value))
    return value


def split_rows(ranks: Ranks, compute: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``compute`` of this rank's block of ``x``, the blocks of all ranks gathered (the whole batch at once alone)."""
    if not ranks.active:
        return compute(x)
    return ranks.gather_rows(compute(x[ranks.shard(x.shape[0])]))
