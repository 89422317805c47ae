"""The Python API: a scheduler-shaped object over a plan, stepped like a diffusers scheduler.

    solver = DPMSolver(algo="sde-dpmsolver++", order=2, steps=20, seed=0)
    x = solver.initial_latents((4, 2))
    for t in solver.timesteps:
        x = solver.step(model(solver.scale_model_input(x, t), t), t, x)

(``scale_model_input`` is EDM's c_in; on VP and flow it returns x itself.)

This object owns the loop state an API user needs between calls (the step index and the
``solvers.StepState``); the update itself is ``solvers.step``, the same one the command line runs.
"""

from __future__ import annotations

import torch

from .config import SolverConfig
from .errors import ConfigError
from .brownian import noise_source
from .noise import initial_latents
from .plan import Plan, build_plan
from .processes import with_process_defaults
from .solvers import START, StepState, scaled_noise
from .solvers import step as step_row


class DPMSolver:
    """A DPM-Solver family sampler; keyword arguments are the command-line flags' names.

    ``noise``: the SDE steps' noise, "gaussian" (seeded draws), "brownian" (the seed's Brownian path,
    as ``dpmcli sample --noise brownian``) or "k-diffusion" (k-diffusion's torchsde Brownian tree);
    a ``noise=`` tensor given to :meth:`step` wins over all three.
    """

    def __init__(self, *, seed: int = 0, noise: str = "gaussian", **options):
        unknown = sorted(set(options) - set(SolverConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"DPMSolver: unknown option(s): {', '.join(unknown)}")
        for grid in ("sigmas", "timesteps"):  # custom grids, as lists, arrays or tensors
            if options.get(grid) is not None:
                options[grid] = tuple(float(v) for v in options[grid])
        self.plan: Plan = build_plan(with_process_defaults(SolverConfig(**options), options))
        if self.plan.config.method == "adaptive":
            raise ConfigError("DPMSolver: --method adaptive picks its steps while it runs; use dpmcli.adaptive.sample_adaptive")
        self.seed, self.noise = seed, noise
        noise_source(noise, seed, self.plan, "DPMSolver: noise")  # an unknown kind fails here, not at the first SDE step
        self.timesteps = self.plan.timestep_values  # one per model call (singlestep adds inner points)
        self.sigmas = self.plan.sigmas
        self._rows = self.plan.rows
        self.reset()

    @property
    def config(self) -> SolverConfig:
        return self.plan.config

    def reset(self) -> None:
        """Forget the history and start again from the first step (same noise stream)."""
        self._index = 0
        self._state: StepState = START
        self._noise = noise_source(self.noise, self.seed, self.plan, "DPMSolver: noise")

    def initial_latents(self, shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """x_T ~ N(0, init_noise_sigma^2 I) from the seed (EDM: sqrt(sigma_max^2 + 1); 1 elsewhere)."""
        return initial_latents(self.seed, tuple(shape), device, dtype, self.plan.schedule.init_noise_sigma)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """What the network is given at the next step: ``sample`` times EDM's c_in (``sample`` itself elsewhere)."""
        if self._index >= len(self._rows):
            raise ConfigError("DPMSolver.scale_model_input: all steps are done; call reset() to sample again")
        scale = self._rows[self._index].input_scale
        return sample if scale == 1.0 else sample * scale

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, noise: torch.Tensor | None = None):
        """Advance ``sample`` from ``timestep`` to the next grid point; returns the new sample.

        ``noise`` (standard normal, shaped like ``sample``) overrides the seeded draw of SDE steps.
        """
        index = self._index
        if index >= len(self.timesteps):
            raise ConfigError("DPMSolver.step: all steps are done; call reset() to sample again")
        expected = self.timesteps[index]
        if timestep is not expected and float(timestep) != expected:
            raise ConfigError(
                f"DPMSolver.step: got timestep {float(timestep):g}, but step {index} is at timestep {expected}"
            )
        row = self._rows[index]
        x_next, self._state = step_row(row, sample, model_output, self._state, scaled_noise(row, sample, self._noise, noise))
        self._index = index + 1
        return x_next
