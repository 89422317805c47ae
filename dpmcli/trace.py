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
        self.kept: list[tuple[int, dict, np.ndarray, np.ndarray]] = []
        self.paths: list[np.ndarray] = []
        self._last = None

    @staticmethod
    def _numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().copy()

    def __call__(self, event) -> None:
        if self.keep_all:
            entry = (event.index, event.info(), event.x, event.x0)
            if event.index % self.stride == 0:
                self.kept.append((entry[0], entry[1], self._numpy(event.x), self._numpy(event.x0())))
            else:
                self._last = entry  # converted only if it turns out to be the last call
        if self.trajectories:
            self.paths.append(self._numpy(event.x[: self.trajectories]))
            self._final = event.x_next[: self.trajectories]

    def trajectory_array(self) -> np.ndarray | None:
        """(calls + 1, k, dims): the first k samples from x_T to the final sample."""
        if not self.paths:
            return None
        return np.stack(self.paths + [self._numpy(self._final)])

    def arrays(self, final: torch.Tensor) -> dict:
        """What ``--trace FILE.npz`` holds."""
        kept = list(self.kept)
        if self._last is not None and (not kept or self._last[0] > kept[-1][0]):
            index, info, x, x0 = self._last
            kept.append((index, info, self._numpy(x), self._numpy(x0())))
        return {
            "steps": np.array([k[0] for k in kept], dtype=np.int64),
            "timesteps": np.array([k[1]["timestep"] for k in kept], dtype=np.float64),
            "sigmas": np.array([k[1]["sigma"] for k in kept], dtype=np.float64),
            "latents": np.stack([k[2] for k in kept]),
            "x0": np.stack([k[3] for k in kept]),
            "final": self._numpy(final),
        }
