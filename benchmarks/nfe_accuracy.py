"""The best sample for 5 or 10 model calls: diffusers' best configuration, dpmcli's best untuned one, and a tuned recipe.

Mixtures (ring, gmm64, and quad4: a 4-D mixture in benchmarks/mixtures that nothing was tuned on),
Stable Diffusion's betas, x_T at t = 999 from seed 0 (4096 samples, the held-out set), NFE 5 and 10.
Error = median L2 distance to the exact clean end point of the probability-flow ODE from the same
x_T (DOP853), for every run alike:

* diffusers: every configuration of DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler,
  UniPCMultistepScheduler and DEISMultistepScheduler (``dpmcli.peers.sweep_peers``: every order,
  solver type, algorithm, grid flag and final-sigma setting), stepped by diffusers itself; the best;
* dpmcli untuned: every stock configuration (both algorithms, orders 1-3, published and exact
  weights, with and without --corrector unic, every stock grid, both final sigmas, and on sigma 0
  --final-decay 0 and 1); the best;
  both bests are picked on the held-out set itself, which flatters them;
* tuned: ``dpmcli tune`` on training x_T (seed 1, 512 samples) for seven solvers (DPM-Solver++ order
  2 and 3, each with and without the UniC corrector, order 4 with it, and DPM-Solver order 2 and 3);
  the one with the lowest *training* loss, scored on the held-out set.

Networks (digits at guidance 1 and 4, digits-flow at guidance 2; 500 held-out samples, class
all): the same three, scored by the distance to a 200-step reference run from the same x_T and
by class accuracy; the tuned recipe is DPM-Solver++(2M) with UniC, 200 training samples (seed 1).
The untuned sweeps are smaller here (published weights, orders 2-3) and the table says which was best
by error, and the highest class accuracy any untuned configuration (diffusers' or dpmcli's) reached.

All in one process, torch on 2 threads. Results go to stdout as Markdown tables (the README quotes
them), progress and timings to stderr.

    python benchmarks/nfe_accuracy.py              # about 36 minutes on two CPU cores
    python benchmarks/nfe_accuracy.py --mixtures   # the mixtures only (about 19 minutes)
    python benchmarks/nfe_accuracy.py --networks   # the networks only (about 17 minutes)
"""

from __future__ import annotations

import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpmcli.config import SolverConfig
from dpmcli.errors import ConfigError
from dpmcli.experiment import apply_model_schedule, run_plan
from dpmcli.ground_truth import MixtureReferences, ReferenceRuns, median_l2
from dpmcli.models import load_model
from dpmcli.noise import initial_latents
from dpmcli.peers import run_peer, sweep_peers
from dpmcli.plan import build_plan
from dpmcli.tune import STOCK_SPACINGS, TuneSpec, tune

HERE = Path(__file__).parent
MIXTURES = ("ring", "gmm64", f"gmm:{HERE / 'mixtures' / 'quad4.json'}")
NETWORKS = (("digits", 1.0), ("digits", 4.0), ("digits-flow", 2.0))
NFES = (5, 10)
SEED, TRAIN_SEED = 0, 1
TUNED_SOLVERS = ({}, {"order": 3}, {"corrector": "unic"}, {"order": 3, "corrector": "unic"}, {"order": 4, "corrector": "unic"},
                 {"algo": "dpmsolver", "order": 2}, {"algo": "dpmsolver", "order": 3})
NETWORK_SOLVER = {"corrector": "unic"}
NETWORK_EVALUATIONS = 250


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def untuned_configs(base: SolverConfig, nfe: int, network: bool) -> list[SolverConfig]:
    """Every stock dpmcli configuration at ``nfe`` model calls (multistep: steps = nfe)."""
    algos = ("dpmsolver++",) if network else ("dpmsolver++", "dpmsolver")
    orders = (2, 3) if network else (1, 2, 3)
    weights = ("published",) if network else ("published", "exact")
    finals = (("zero", 0.0), ("zero", 1.0)) if network else (("zero", 0.0), ("zero", 1.0), ("sigma-min", 0.0))
    out = []
    for algo, order, spacing, coefficients, corrector, (final, decay) in itertools.product(
        algos, orders, STOCK_SPACINGS[base.process], weights, ("none", "unic"), finals,
    ):
        config = base.with_options(algo=algo, order=order, spacing=spacing, coefficients=coefficients, corrector=corrector,
                                   final_sigma=final, final_decay=decay, steps=nfe)
        try:
            if build_plan(config).nfe == nfe:
                out.append(config)
        except ConfigError:
            continue
    return out


def describe(cfg: SolverConfig) -> str:
    parts = [cfg.algo, f"order {cfg.order}", cfg.spacing]
    if cfg.coefficients == "exact":
        parts.append("exact")
    if cfg.corrector != "none":
        parts.append(cfg.corrector)
    if cfg.final_sigma != "zero":
        parts.append(f"final {cfg.final_sigma}")
    if cfg.final_decay:
        parts.append(f"final decay {cfg.final_decay:.2g}")
    return " ".join(parts)


class Scorer:
    """One model's held-out x_T and what a run is measured against there."""

    def __init__(self, name: str, guidance: float | None, nfe: int, cache: Path):
        self.model = load_model(name, device="cpu", guidance_scale=guidance)
        self.guidance = guidance
        self.base = apply_model_schedule(SolverConfig(steps=nfe), self.model.schedule_options, model=name)[0]
        plan = build_plan(self.base)  # the default grid: x_T at its top, the clean end point at sigma 0
        batch = 4096 if self.model.mixture is not None else self.model.compare_batch
        self.x_T = initial_latents(SEED, (batch, *self.model.sample_shape), "cpu", torch.float32, plan.schedule.init_noise_sigma)
        if self.model.mixture is not None:
            references = MixtureReferences(self.model.mixture, self.x_T, seed=SEED, bandwidth=1.0, reference_steps=None, cache_dir=cache)
            self.reference = references.ode(plan)
        else:
            self.reference = ReferenceRuns(self.model, self.x_T, 200, seed=SEED, cache_dir=cache).reference(plan, None, guidance)

    def score(self, samples: torch.Tensor) -> tuple[float, float | None]:
        samples = samples.detach()
        if not torch.isfinite(samples).all():
            return math.inf, None
        error = median_l2(samples.double().cpu(), self.reference)[0]
        accuracy = None if self.model.mixture is not None else self.model.quality(samples).get("class_accuracy")
        return error, accuracy

    def dpmcli(self, config: SolverConfig) -> tuple[float, float | None]:
        plan = build_plan(config)
        return self.score(run_plan(plan, self.model.bind(plan, self.guidance), self.x_T.clone()).samples)

    def peer(self, peer) -> tuple[float, float | None]:
        plan = build_plan(self.base)
        return self.score(run_peer(peer, self.base, self.model.bind(plan, self.guidance), self.x_T.clone()).samples)


def best(scored: list[tuple[str, float, float | None]]) -> tuple[str, float, float | None]:
    return min(scored, key=lambda item: item[1])


def cell(name: str, guidance: float | None, nfe: int, cache: Path) -> dict:
    """The three bests of one model at one NFE."""
    began = time.perf_counter()
    scorer = Scorer(name, guidance, nfe, cache)
    network = scorer.model.mixture is None
    peers = sweep_peers(scorer.base, nfe)
    peer_scores = [(p.label, *scorer.peer(p)) for p in peers]
    configs = untuned_configs(scorer.base, nfe, network)
    ours = [(describe(c), *scorer.dpmcli(c)) for c in configs]
    log(f"{name} g{guidance} NFE {nfe}: {len(peers)} diffusers and {len(configs)} dpmcli configurations in {time.perf_counter() - began:.0f} s")
    tuned = []
    for options in (NETWORK_SOLVER,) if network else TUNED_SOLVERS:
        start = time.perf_counter()
        spec = TuneSpec(base=SolverConfig(**options), nfe=nfe, model=name, explicit=frozenset(options), seed=SEED, train_seed=TRAIN_SEED,
                        guidance_scale=guidance, cache_dir=cache, evaluations=NETWORK_EVALUATIONS if network else 1500)
        result = tune(spec)
        error, accuracy = scorer.dpmcli(result.recipe.config)
        how = result.tuned.label.removeprefix("tuned ")  # which start and final-step policy won, e.g. "(from logsnr, searched final sigma)"
        tuned.append((f"{describe(result.recipe.config).replace(' custom', '').replace(' final', '')} {how}", result.tuned.train_error,
                      error, accuracy))
        log(f"  tune {options or 'order 2'}: train {result.tuned.train_error:.4g}, held-out {error:.4g} ({time.perf_counter() - start:.0f} s)")
    chosen = min(tuned, key=lambda item: item[1])  # by training error only
    log(f"  best diffusers {best(peer_scores)[:2]}, best dpmcli untuned {best(ours)[:2]}, tuned {chosen[0]} {chosen[2]:.4g}")
    return {
        "model": name if guidance is None else f"{name} (guidance {guidance:g})", "nfe": nfe,
        "peer": best(peer_scores), "ours": best(ours), "tuned": (chosen[0], chosen[2], chosen[3]),
        "all_untuned_accuracy": max((a for _, _, a in peer_scores + ours if a is not None), default=None),
    }


def table(rows: list[dict], network: bool) -> str:
    if network:
        head = ("| model | NFE | diffusers best (config) | error / acc | dpmcli untuned best (config) | error / acc | tuned | error / acc | "
                "tuned / diffusers | most accurate untuned |\n|---|---|---|---|---|---|---|---|---|---|")
    else:
        head = ("| model | NFE | diffusers best (config) | error | dpmcli untuned best (config) | error | tuned (held-out) | error | "
                "untuned / diffusers | tuned / diffusers |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        (pl, pe, pa), (ol, oe, oa), (tl, te, ta) = r["peer"], r["ours"], r["tuned"]
        if network:
            lines.append(f"| {r['model']} | {r['nfe']} | {pl} | {pe:.4g} / {pa:.3f} | {ol} | {oe:.4g} / {oa:.3f} | {tl} | {te:.4g} / {ta:.3f} | "
                         f"{te / pe:.2f} | {r['all_untuned_accuracy']:.3f} |")
        else:
            lines.append(f"| {r['model']} | {r['nfe']} | {pl} | {pe:.4g} | {ol} | {oe:.4g} | {tl} | {te:.4g} | {oe / pe:.2f} | {te / pe:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        if "--networks" not in argv:
            mixtures = [cell(name, None, nfe, cache) for name in MIXTURES for nfe in NFES]
            print("## Mixtures: median L2 distance to the exact clean end point, held-out x_T\n")
            print(table([{**r, "model": r["model"].replace(f"gmm:{HERE / 'mixtures' / 'quad4.json'}", "quad4")} for r in mixtures],
                        network=False))
        if "--mixtures" not in argv:
            networks = [cell(name, guidance, nfe, cache) for name, guidance in NETWORKS for nfe in NFES]
            print("\n## Networks: distance to a 200-step reference run / class accuracy, held-out x_T\n")
            print(table(networks, network=True))
    log(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
