"""``--corrector unic``: UniPC's corrector on top of the multistep DPM-Solvers, and which configs it goes with.

UniC re-forms each step's end point once the next model output is known: the latent at grid point
k is recomputed from the one at k-1 with a polynomial that also passes through the output at k
itself, one order higher than the predictor's. That output is the one the next step evaluates
anyway, so the number of model calls is unchanged; the last step has no later call and stays the
predictor's. How the rows carry it: :mod:`dpmcli.specs` (``RowSpec.corrector``), its weights
:func:`dpmcli.coefficients.unipc_weights` (published B(h) forms) or the exact Lagrange weights.
"""

from __future__ import annotations

from .errors import ConfigError, bad_choice

CORRECTORS = ("none", "unic")
UNIC_VARIANTS = ("bh1", "bh2")  # UniPC's B(h) = z and e^z - 1, z = -h for the data prediction, h for the noise (bh2: diffusers' default)
UNIPC_MAX_ORDER = 3  # diffusers' UniPCMultistepScheduler: what --compat diffusers --corrector unic reproduces


def unipc_orders(cfg, steps: int) -> list[int]:
    """The order of each step of diffusers' UniPCMultistepScheduler: warm-up 1, 2, ..., and with
    lower_order_final never more than the steps left (its own rule, not DPMSolver's below-15 one)."""
    return [min(cfg.order, k + 1, steps - k if cfg.lower_order_final else cfg.order) for k in range(steps)]


def check_corrector(cfg) -> None:
    """--corrector and --unic-variant: one line naming the option for anything the corrector cannot go with."""
    if cfg.corrector not in CORRECTORS:
        raise bad_choice("--corrector", cfg.corrector, CORRECTORS)
    if cfg.unic_variant not in UNIC_VARIANTS:
        raise bad_choice("--unic-variant", cfg.unic_variant, UNIC_VARIANTS)
    if cfg.corrector == "none":
        return
    if cfg.method != "multistep" or cfg.startup != "lower-order":
        raise ConfigError(
            f"--corrector: unic corrects multistep steps (--method multistep, --startup lower-order); "
            f"got --method {cfg.method}" + (f" --startup {cfg.startup}" if cfg.method == "multistep" else "")
        )
    if cfg.is_sde:
        raise ConfigError(f"--corrector: unic is a corrector for the ODE algorithms; got --algo {cfg.algo} (use dpmsolver++ or dpmsolver)")
    if cfg.compat == "k-diffusion":
        raise ConfigError("--corrector: k-diffusion has no UniC corrector; drop --corrector or --compat k-diffusion")
    if cfg.compat == "diffusers":
        if cfg.order > UNIPC_MAX_ORDER:
            raise ConfigError(f"--compat diffusers: UniPCMultistepScheduler stops at order {UNIPC_MAX_ORDER}; got --order {cfg.order}")
        if cfg.thresholding and not cfg.predicts_data:
            raise ConfigError("--thresholding: UniPCMultistepScheduler thresholds the data prediction only (predict_x0); "
                              "use --algo dpmsolver++ or drop --thresholding")
        if cfg.euler_at_final:
            raise ConfigError("--euler-at-final: UniPCMultistepScheduler has no such option (its last step follows lower_order_final); drop it")
        if cfg.unic_variant == "bh1" and cfg.final_sigma == "zero":
            # B(h) = h is infinite on the step to sigma 0, and diffusers multiplies it by zero there
            raise ConfigError("--unic-variant: bh1 with --final-sigma zero gives NaN in diffusers' UniPCMultistepScheduler; "
                              "use bh2 or --final-sigma sigma-min")
        if cfg.spacing == "logsnr":
            raise ConfigError("--compat diffusers: UniPCMultistepScheduler has no logsnr grid (use_lu_lambdas); choose another --spacing")
