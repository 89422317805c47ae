"""Keeping the intermediate states of a run: a sampler callback."""

from __future__ import annotations

import numpy as np
import torch


class Trace:
    """Keeps every ``stride``-th latent and x0 prediction (and the last), and the full
    trajectories of the first ``trajectories`` samples, as float32 arrays on the CPU."""

    def __init__(self, stride: int = 1, keep_all: bool = True, trajectories: int = 0):
        self.stride = stride
        self.keep_all = keep_all
        self.trajectories = trajectories
        self.steps: list[int] = []
        self.latents: list[np.ndarray] = []
        self.x0: list[np.ndarray] = []
        self.paths: list[np.ndarray] = []
        self._last = None

    @staticmethod
    def _numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().copy()

    def __call__(self, event) -> None:
        i, last = event.index, event.plan.nfe - 1
        if self.keep_all and (i % self.stride == 0 or i == last):
            self.steps.append(i)
            self.latents.append(self._numpy(event.x))
            self.x0.append(self._numpy(event.x0()))
        if self.trajectories:
            self.paths.append(self._numpy(event.x[: self.trajectories]))
            if i == last:
                self.paths.append(self._numpy(event.x_next[: self.trajectories]))

    def trajectory_array(self) -> np.ndarray | None:
        """(steps + 1, k, dims): the first k samples from x_T to the final sample."""
        return np.stack(self.paths) if self.paths else None

    def arrays(self, plan, final: torch.Tensor) -> dict:
        """What ``--trace FILE.npz`` holds."""
        steps = np.array(self.steps, dtype=np.int64)
        return {
            "steps": steps,
            "timesteps": np.array([plan.evaluations[i].timestep for i in steps]),
            "sigmas": np.array([plan.evaluations[i].sigma for i in steps]),
            "latents": np.stack(self.latents),
            "x0": np.stack(self.x0),
            "final": self._numpy(final),
            "final_sigma": np.array(plan.sigmas[-1]),
        }
