"""The digits model's sample quality by solver, steps, guidance and network precision.

Prints the tables of docs/digits.md ("Measured quality"): DPM-Solver++ at orders 1-3 and
5-50 steps, unconditional and with guidance 2 and 4 (500 samples, seed 0), the nearest-neighbour
distance quantiles against those of real held-out digits, and the guidance-2 run with the
network in bfloat16 and float16 (latents in float32).

    python benchmarks/digits_quality.py          # about a minute on two CPU cores
"""

from __future__ import annotations

import torch

from dpmcli.models.digits import load_digits_model, nearest_distances, sample_digits

BATCH, SEED = 500, 0
SETTINGS = [(2, 5), (2, 10), (2, 20), (2, 50), (1, 10), (1, 20), (3, 10)]  # (order, steps)
MODELS = {"unconditional": {"class_label": None}, "guidance 2": {"guidance_scale": 2.0}, "guidance 4": {"guidance_scale": 4.0}}


def main() -> None:
    torch.set_num_threads(2)
    header = " | ".join(f"order {o}, {s} steps" for o, s in SETTINGS)
    print(f"| samples | {header} |")
    print("|---" * (len(SETTINGS) + 1) + "|")
    for name, options in MODELS.items():
        model = load_digits_model(**options)
        scores = [model.quality(sample_digits(model, BATCH, SEED, steps, order=order)) for order, steps in SETTINGS]
        for key in ("class_accuracy", "classifier_confidence", "nn_distance"):
            if scores[0][key] is None:
                continue
            print(f"| {name}: {key} | " + " | ".join(f"{q[key]:.3f}" for q in scores) + " |")

    model = load_digits_model(guidance_scale=1.0)
    train, _ = model.data.split(held_out=False)
    held_out, _ = model.data.split(held_out=True)
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75], dtype=torch.float64)
    for name, images in (("guidance 1 samples", sample_digits(model, BATCH, SEED)), ("real held-out digits", held_out)):
        distances = nearest_distances(images, train)
        closer = (distances < 1.0).double().mean().item()
        quantiles = "/".join(f"{v:.2f}" for v in torch.quantile(distances, levels).tolist())
        print(f"{name}: nearest-training distance quantiles 5/25/50/75 % {quantiles}; share closer than 1.0: {closer:.1%}")

    for dtype in (torch.bfloat16, torch.float16):
        model = load_digits_model(dtype=dtype, guidance_scale=2.0)
        quality = model.quality(sample_digits(model, BATCH, SEED))
        print(f"network in {str(dtype).removeprefix('torch.')}: class accuracy {quality['class_accuracy']:.3f}, "
              f"NN distance {quality['nn_distance']:.2f}")


if __name__ == "__main__":
    main()
