"""How much class accuracy a solver could still gain on the digits models: the 200-step reference run's own.

For each digits cell of benchmarks/nfe_accuracy.py (the same held-out x_T: seed 0, 500 samples,
class all), the class accuracy and classifier confidence of the reference run every solver is
measured against, with the binomial standard error of the accuracy; a solver that matches the
reference run exactly scores this, so it is the ceiling of "a gain in class accuracy".

    python benchmarks/digits_ceiling.py     # about a minute on two CPU cores
"""

from __future__ import annotations

import math

import torch

from dpmcli.config import SolverConfig
from dpmcli.experiment import apply_model_schedule
from dpmcli.ground_truth import ReferenceRuns
from dpmcli.models import load_model
from dpmcli.noise import initial_latents
from dpmcli.plan import build_plan

CELLS = (("digits", 1.0), ("digits", 4.0), ("digits-flow", 2.0))
SEED, STEPS = 0, 200


def main() -> None:
    torch.set_num_threads(2)
    print("| model | guidance | samples | reference-run class accuracy | standard error | classifier confidence |")
    print("|---|---|---|---|---|---|")
    for name, guidance in CELLS:
        model = load_model(name, device="cpu", guidance_scale=guidance)
        base = apply_model_schedule(SolverConfig(steps=10), model.schedule_options, model=name)[0]
        plan = build_plan(base)
        x_T = initial_latents(SEED, (model.compare_batch, *model.sample_shape), "cpu", torch.float32, plan.schedule.init_noise_sigma)
        reference = ReferenceRuns(model, x_T, STEPS, seed=SEED, cache_dir=None).reference(plan, None, guidance)
        quality = model.quality(reference.float())
        accuracy, n = quality["class_accuracy"], x_T.shape[0]
        error = math.sqrt(max(accuracy * (1 - accuracy), 1.0 / n) / n)  # at least one sample's worth where it is 1
        print(f"| {name} | {guidance:g} | {n} | {accuracy:.3f} | {error:.3f} | {quality['classifier_confidence']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
