"""``compare`` on torchrun: two CPU ranks (gloo) give the results of one process; bad rendezvous is one line.

The torchrun tests start the job themselves (``python -m torch.distributed.run --standalone``, which
picks a free port) and wait for it to end; each takes a few seconds on two cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dpmcli.distributed import Ranks, ShardNoise, run_split
from dpmcli.sampler import RunResult

TIMING = ("seconds", "cache", "cache_hits", "cache_misses", "reference_nfe")


def _compare(tmp_path, name: str, args: list[str], ranks: int) -> dict:
    out = tmp_path / name
    command = ["-m", "dpmcli", "compare", *args, "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / f"cache-{name}")]
    if ranks > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "rank 0 prints the table"
    return json.loads((out / "results.json").read_text())


def _differences(a, b, rtol: float, path: str = "") -> list[str]:
    """Where two results documents differ beyond rtol (timings and cache counters aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in set(a) | set(b) if not k.endswith("seconds") and k not in TIMING}
        return [d for k in sorted(keys) for d in (_differences(a.get(k), b.get(k), rtol, f"{path}/{k}") if k in a and k in b else [f"{path}/{k} missing"])]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, rtol, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=rtol, abs_tol=1e-15) else [f"{path}: {a!r} against {b!r}"]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]


def test_two_cpu_ranks_give_the_single_process_results_on_a_mixture(tmp_path):
    """ODE and SDE runs (MMD^2 and strong error included) on ring: the same document as one process.

    The ranks solve their halves of the exact ODE reference separately, so DOP853 chooses other steps
    than on the whole batch: the references (and the errors) agree to its tolerance, not to the bit.
    """
    args = ["--model", "ring", "--batch", "256", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2", "--steps", "5,10"]
    one, two = _compare(tmp_path, "one", args, 1), _compare(tmp_path, "two", args, 2)
    assert len(one["runs"]) == 8
    assert _differences(one, two, rtol=1e-7) == []


def test_two_cpu_ranks_give_the_single_process_results_on_digits(tmp_path):
    """The digits network (every class, as the default grid asks) and its reference runs, split over two ranks."""
    args = ["--model", "digits", "--batch", "10", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "2", "--steps", "5",
            "--reference-steps", "20", "--guidance-scale", "1,2"]
    one, two = _compare(tmp_path, "one", args, 1), _compare(tmp_path, "two", args, 2)
    assert {r["class_accuracy"] for r in one["runs"]} == {r["class_accuracy"] for r in two["runs"]}
    assert _differences(one, two, rtol=1e-9) == []


@pytest.mark.parametrize("count, world", [(10, 2), (7, 3), (2, 4), (4096, 8)])
def test_shards_cover_every_sample_once(count, world):
    blocks = [Ranks(rank=r, world=world).shard(count) for r in range(world)]
    rows = [i for block in blocks for i in range(count)[block]]
    assert rows == list(range(count))
    sizes = [len(range(count)[block]) for block in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_a_rank_block_of_noise_is_the_rows_of_the_whole_batch():
    calls = []

    def whole(step, like, scale):
        calls.append(tuple(like.shape))
        generator = torch.Generator().manual_seed(step)
        return scale * torch.randn(like.shape, generator=generator, dtype=like.dtype)

    rows = Ranks(rank=1, world=3).shard(9)
    block = ShardNoise(whole, rows, (9, 2))
    like = torch.zeros(3, 2, dtype=torch.float64)
    assert torch.equal(block(4, like, 0.5), whole(4, torch.zeros(9, 2, dtype=torch.float64), 0.5)[rows])
    assert calls[0] == (9, 2)


def test_a_single_process_runs_the_whole_batch_unsplit():
    x = torch.arange(6.0).reshape(3, 2)
    seen = []

    def run(block, noise, first):
        seen.append((block.shape, noise, first))
        return RunResult(samples=block * 2, nfe=1, seconds=0.0)

    result = run_split(Ranks(), run, x)
    assert seen == [(torch.Size([3, 2]), None, 0)] and torch.equal(result.samples, x * 2)


def _alone(env_changes: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(env_changes)
    command = [sys.executable, "-m", "dpmcli", "compare", "--model", "ring", "--batch", "16", "--steps", "5", "--out", "out"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_an_unreachable_rendezvous_is_one_line_and_exit_2(tmp_path):
    """A rank whose rendezvous does not answer (nothing listens on the port) fails after the timeout, in one line."""
    done = _alone({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9",
                   "DPMCLI_DIST_TIMEOUT": "2"}, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpmcli: error: rank 1: cannot reach the torchrun rendezvous at 127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []


def test_a_torchrun_environment_without_its_rendezvous_is_one_line(tmp_path):
    done = _alone({"WORLD_SIZE": "2", "RANK": "0"}, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["dpmcli: error: rank 0: MASTER_ADDR is not set; launch with torchrun (or srun with its rendezvous variables)"]
    assert list(tmp_path.iterdir()) == []


FAILING_RANK = """
import sys
import dpmcli.distributed as distributed
from dpmcli.cli.main import main

whole = distributed.run_split

def run_split(ranks, run, x, noise=None):
    if ranks.rank == 1:
        raise MemoryError("CUDA out of memory (simulated on rank 1)")
    return whole(ranks, run, x, noise)

distributed.run_split = run_split
import dpmcli.compare
dpmcli.compare.run_split = run_split
sys.argv = ["dpmcli", *sys.argv[1:]]
main()
"""


def test_a_failing_rank_fails_the_job_naming_the_rank_and_writes_nothing(tmp_path):
    """Rank 1 runs out of memory in its first run: the job fails, the line names rank 1, --out is not created."""
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
               "compare", "--model", "ring", "--batch", "64", "--steps", "5", "--out", str(tmp_path / "out"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPMCLI_DIST_TIMEOUT": "60"}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("dpmcli: error:")]
    assert any(line.startswith("dpmcli: error: rank 1: ") and "out of memory" in line for line in ours), done.stderr[-3000:]
    assert not (tmp_path / "out").exists()


INTERRUPTED = """
import sys
from dpmcli.cli import compare_cmd
from dpmcli.cli.main import main

real = compare_cmd.run_sweep

def run_sweep(prepared, on_run=None, **options):
    done = []

    def counted(label):
        done.append(label)
        if len(done) == 2:
            raise KeyboardInterrupt  # Ctrl-C once two runs are recorded

    return real(prepared, on_run=counted, **options)

compare_cmd.run_sweep = run_sweep
sys.argv = ["dpmcli", *sys.argv[1:]]
main()
"""


def test_a_sweep_interrupted_alone_resumes_on_two_ranks(tmp_path):
    """Ctrl-C after two runs of one process, then --resume under torchrun: the results of an uninterrupted sweep."""
    args = ["compare", "--model", "ring", "--batch", "256", "--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2",
            "--steps", "5", "--no-cache", "--quiet", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    first = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 130, first.stderr[-2000:]
    assert "2 of 4 run(s) saved" in first.stderr
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dpmcli",
                              *args, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "dpmcli", *args[:-1], str(tmp_path / "single")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("out", "single"))
    assert _differences(a, b, rtol=1e-7) == []
