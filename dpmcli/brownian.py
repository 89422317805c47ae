"""One Brownian path shared by every SDE run: a Brownian tree and the noise source built on it.

The noise of one step of SDE-DPM-Solver++ from lambda_s to lambda_t is exactly
``sigma_t * exp(-lambda_t) * (B(tau_t) - B(tau_s))`` for a standard Brownian motion B in the
time tau = exp(2 lambda) (tau = -exp(-2 lambda) for the noise-prediction sde-dpmsolver); at
another eta the data form's time is exp(2 eta lambda), the noise form's is unchanged. The
step therefore needs ``z = (B(tau_t) - B(tau_s)) / sqrt(tau_t - tau_s)``. Drawing these
increments from one fixed path B, instead of drawing every z afresh, makes runs with
different grids see increments that add up: a fine run's noise over a coarse step sums to
the coarse step's noise. That is what strong convergence (errors shrinking with the step
count against a fine-step solution) needs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .kdiffusion import TreeNoise
from .noise import GaussianNoise, derived_seed, row_normals, splitmix64

# Bumped whenever the construction (hashing, depth, ranges) changes, so that anything cached
# from a Brownian path (a reference solution, say) can name the path it was computed on.
PATH_VERSION = 2  # 2: per-row counter-based normals (noise.row_normals); 1: a torch generator per node

# The tree's time range covers the schedule's lambda range widened by this much on each side,
# so float rounding in a grid's end points never falls outside it.
LAMBDA_PAD = 0.25

DEFAULT_DEPTH = 40
_MAX_DEPTH = 62


class BrownianTree:
    """A deterministic Brownian motion W on [t0, t1] with W(t0) = 0, float64 on the CPU.

    Construction: W(t1) is drawn as sqrt(t1 - t0) times a standard normal. Every other value
    comes from repeated bisection of [t0, t1]: given W at both ends of an interval [a, b], its
    split point m is drawn from the Brownian bridge, W(m) ~ N(W(a) + (m - a)/(b - a) (W(b) - W(a)),
    (m - a)(b - m)/(b - a)), which is exactly the law of a Brownian motion at m given its values
    at a and b. The standard normals used at a split point are counter-based draws,
    ``noise.row_normals(seed, 2, rows, shape[1:], counter=hash of (level, position))`` of that
    point in the dyadic tree, float64, with ``shape[0]`` the rows (the samples of a batch; a
    1-d shape is one row per element, a 0-d shape one row), so W at a split point is a fixed
    function of the seed and never of which other times were asked for, or in what order, and
    row i of W is a fixed function of (seed, i): the first rows of a tree for a larger batch
    are exactly the tree for a smaller batch. A query at t walks down from the root
    towards t, stopping when t is a split point or after ``max_depth`` levels; inside that last
    interval (a leaf) W is the linear interpolation of its ends, the bridge mean. The result is
    one fixed continuous piecewise-linear path whose values at the split points are exactly
    Brownian; an increment over [s, t] has a variance smaller than t - s by at most half a
    leaf's width (leaves are 2**-max_depth of the range wide), far below anything a sampler
    resolves. Split values are kept in a bounded LRU cache, so repeated and nearby queries,
    which share the top of their paths, are cheap.

    ``split="linear"`` splits intervals at their midpoint; ``split="geometric"`` (t0 > 0) at the
    geometric mean, so that leaves have the same width relative to t everywhere: the right
    choice when t spans orders of magnitude, as tau = exp(2 lambda) does.
    """

    NORMAL_STREAM = 2  # the stream of row_normals the split points draw from

    def __init__(
        self,
        t0: float,
        t1: float,
        shape: Sequence[int] | int,
        seed: int,
        *,
        max_depth: int = DEFAULT_DEPTH,
        split: str = "linear",
        cache_bytes: int = 64 << 20,
    ):
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"BrownianTree needs finite t0 < t1, got [{t0}, {t1}]")
        if split not in ("linear", "geometric"):
            raise ValueError(f"split must be 'linear' or 'geometric', got {split!r}")
        if split == "geometric" and t0 <= 0.0:
            raise ValueError(f"split='geometric' needs t0 > 0, got t0 = {t0}")
        if not isinstance(max_depth, int) or not 1 <= max_depth <= _MAX_DEPTH:
            raise ValueError(f"max_depth must be an integer from 1 to {_MAX_DEPTH}, got {max_depth!r}")
        self.t0, self.t1 = t0, t1
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.seed = int(seed)
        self.max_depth = max_depth
        self.split = split
        self._log0 = math.log(t0) if split == "geometric" else 0.0
        self._logspan = math.log(t1) - self._log0 if split == "geometric" else 0.0
        numel = max(1, math.prod(self.shape))
        self._cache_limit = max(4 * (max_depth + 1), int(cache_bytes) // (8 * numel))
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._rows = self.shape[0] if self.shape else 1
        self._zero = torch.zeros(self.shape, dtype=torch.float64)
        self._end = self._normal(0, 1).mul_(math.sqrt(t1 - t0))  # W(t1)

    # -- the dyadic grid ------------------------------------------------------------------

    def _normal(self, level: int, numerator: int) -> torch.Tensor:
        """The standard normals (float64) of one dyadic point: row i depends only on (seed, i, level, numerator)."""
        counter = splitmix64(splitmix64(int(level)) ^ int(numerator))  # one 64-bit word per point
        z = row_normals(self.seed, self.NORMAL_STREAM, range(self._rows), self.shape[1:], counter=counter)
        return z.reshape(self.shape)

    def _time(self, level: int, numerator: int) -> float:
        u = numerator / (1 << level)  # correctly rounded, so equal fractions give equal times
        if self.split == "geometric":
            return math.exp(self._log0 + self._logspan * u)
        return self.t0 + (self.t1 - self.t0) * u

    def _split_value(self, level: int, numerator: int, tm: float, left: tuple, right: tuple) -> torch.Tensor:
        """W(tm) on the dyadic point (level, numerator), bridged between ``left`` = (ta, W(ta)) and ``right`` = (tb, W(tb))."""
        (ta, wa), (tb, wb) = left, right
        key = (level, numerator)
        cache = self._cache
        value = cache.get(key)
        if value is not None:
            cache.move_to_end(key)
            return value
        std = math.sqrt((tm - ta) * (tb - tm) / (tb - ta))
        mean = torch.lerp(wa, wb, (tm - ta) / (tb - ta))
        value = mean.add_(self._normal(level, numerator), alpha=std)
        cache[key] = value
        if len(cache) > self._cache_limit:
            cache.popitem(last=False)
        return value

    # -- queries ----------------------------------------------------------------------------

    def _check(self, t) -> float:
        t = float(t)
        if not (self.t0 <= t <= self.t1):  # also rejects NaN
            raise ValueError(f"Brownian tree time {t!r} is outside its range [{self.t0!r}, {self.t1!r}]")
        return t

    def _value(self, t: float) -> torch.Tensor:
        """W(t) as a tensor that may be shared with the cache: do not modify it."""
        if t == self.t0:
            return self._zero
        if t == self.t1:
            return self._end
        ta, tb, wa, wb = self.t0, self.t1, self._zero, self._end
        index = 0  # the current interval is [index, index + 1] / 2**level
        for level in range(self.max_depth):
            numerator = 2 * index + 1
            tm = self._time(level + 1, numerator)
            if not ta < tm < tb:  # float resolution reached: the interval cannot split further
                break
            wm = self._split_value(level + 1, numerator, tm, (ta, wa), (tb, wb))
            if t == tm:
                return wm
            if t < tm:
                tb, wb, index = tm, wm, 2 * index
            else:
                ta, wa, index = tm, wm, 2 * index + 1
        return torch.lerp(wa, wb, (t - ta) / (tb - ta))

    def __call__(self, t: float) -> torch.Tensor:
        """W(t), a new float64 CPU tensor of ``shape``."""
        return self._value(self._check(t)).clone()

    def increment(self, s: float, t: float) -> torch.Tensor:
        """W(t) - W(s), a new float64 CPU tensor (negative of W(s) - W(t) when t < s)."""
        s, t = self._check(s), self._check(t)
        return torch.sub(self._value(t), self._value(s))

    def clear_cache(self) -> None:
        self._cache.clear()


def schedule_lambda_range(schedule) -> tuple[float, float]:
    """The lambda range a Brownian noise source covers for a schedule: its table widened by LAMBDA_PAD."""
    noisiest, cleanest = schedule.lambda_limits
    return noisiest - LAMBDA_PAD, cleanest + LAMBDA_PAD


def _tree_time(lambdas, data: bool, eta: float = 1.0) -> np.ndarray:
    """The positive time the tree runs in: exp(2 eta lambda) (data form) or exp(-2 lambda) (noise form)."""
    with np.errstate(over="ignore"):
        return np.exp((2.0 * eta if data else -2.0) * np.asarray(lambdas, dtype=np.float64))


def path_form(plan) -> tuple[bool, float]:
    """(data form, eta of the tree time): the noise of a data-form step at ``eta`` is an increment in exp(2 eta lambda);
    the noise form's time, exp(-2 lambda), is the same at every eta (docs/mathematics.md, "Any eta")."""
    data = bool(plan.config.predicts_data)
    eta = plan.config.sde_config().sde_eta  # ancestral steps at eta e take the noise of the SDE at eta e^2
    return data, (eta if data and eta > 0.0 else 1.0)


class BrownianNoise:
    """SDE noise from one Brownian path: ``noise(step, like, scale)`` is scale * z_step.

    ``z_step = (B(tau_{step+1}) - B(tau_step)) / sqrt(tau_{step+1} - tau_step)`` with tau from
    ``plan.lambdas``: tau = exp(2 lambda) for the data-prediction (++) algorithms and
    tau = -exp(-2 lambda) for the noise-prediction ones. Each z_step is standard normal and
    the z of different steps are independent, so this is a drop-in replacement for
    :class:`~dpmcli.noise.GaussianNoise`; in addition, runs on different grids built on the
    same schedule with the same seed read the same path B, so a fine run's scaled increments
    over a coarse step add up to the coarse step's. The answer does not depend on the order of
    the calls. B is a :class:`BrownianTree` (tree time s = exp(2 lambda), or s = exp(-2 lambda)
    for the noise form, in which case B(tau) = W(-tau), a Brownian motion read backwards),
    seeded with ``derived_seed(seed, 2)`` and spanning the schedule's lambda range (never the
    grid's; see :func:`schedule_lambda_range`) unless ``lambda_range`` says otherwise.

    Several plans can share one tree (and its cache): pass ``tree=`` (e.g. ``other.tree``), use
    :meth:`for_plans`, or :meth:`shared` with a dict that keeps the trees. Sharing only saves
    work: two sources built separately with the same seed, schedule, form and shape already
    read the same path. With ``tree=``, ``seed``, ``lambda_range``, ``max_depth`` and ``cache_bytes``
    are those of that tree and the arguments are ignored. The returned tensor is new on every call.
    """

    def __init__(
        self,
        seed: int,
        plan,
        shape: Sequence[int],
        *,
        tree: BrownianTree | None = None,
        lambda_range: tuple[float, float] | None = None,
        max_depth: int = DEFAULT_DEPTH,
        cache_bytes: int = 64 << 20,
    ):
        self.plan = plan
        self.shape = tuple(int(s) for s in shape)
        self.data, self.eta = path_form(plan)
        if tree is None:
            tree = self.make_tree(seed, plan, self.shape, lambda_range=lambda_range, max_depth=max_depth,
                                  cache_bytes=cache_bytes)
        elif tree.shape != self.shape:
            raise ValueError(f"the Brownian tree has shape {tree.shape}; this source needs {self.shape}")
        self.tree = tree
        lambdas = np.asarray(plan.lambdas, dtype=np.float64)
        self._finite = np.isfinite(lambdas)
        self.times = _tree_time(lambdas, self.data, self.eta)  # the tree time s of every grid point
        s = self.times[self._finite]
        if s.size and not (s.min() >= tree.t0 and s.max() <= tree.t1):
            lam = lambdas[self._finite]
            raise ValueError(
                f"the grid's lambdas [{lam.min():.6g}, {lam.max():.6g}] fall outside the Brownian tree's range "
                f"(tree time [{tree.t0:.6g}, {tree.t1:.6g}]); pass lambda_range= covering the grid"
            )

    @staticmethod
    def make_tree(
        seed: int,
        plan,
        shape: Sequence[int],
        *,
        lambda_range: tuple[float, float] | None = None,
        max_depth: int = DEFAULT_DEPTH,
        cache_bytes: int = 64 << 20,
    ) -> BrownianTree:
        """The tree a source for ``plan`` reads: it depends on the schedule and the algorithm's form, never the grid."""
        lo, hi = schedule_lambda_range(plan.schedule) if lambda_range is None else map(float, lambda_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"lambda_range must be finite with low < high, got ({lo}, {hi})")
        data, eta = path_form(plan)
        ends = _tree_time([lo, hi], data, eta)
        t0, t1 = float(ends.min()), float(ends.max())
        if not (math.isfinite(t1) and t0 > 0.0):
            if eta != 1.0:  # the data form's time exp(2 eta lambda): a large eta, not the range, is what overflows
                raise ConfigError(
                    f"--eta: {plan.config.sde_eta:g} is too large for Brownian noise on this schedule (its time "
                    f"exp(2 x {eta:g} x lambda) overflows); use --noise gaussian or a smaller eta"
                )
            raise ValueError(f"lambda_range ({lo}, {hi}) is too wide: exp(2 lambda) overflows or underflows")
        return BrownianTree(t0, t1, shape, derived_seed(seed, 2), max_depth=max_depth, split="geometric",
                            cache_bytes=cache_bytes)

    @staticmethod
    def tree_key(plan, shape: Sequence[int], lambda_range: tuple[float, float] | None = None) -> tuple:
        """What decides the tree of a plan's source (besides the seed): lambda range, form (and eta), shape."""
        lam = schedule_lambda_range(plan.schedule) if lambda_range is None else tuple(map(float, lambda_range))
        data, eta = path_form(plan)
        return (lam, data, *(() if eta == 1.0 else (eta,)), tuple(int(s) for s in shape))

    @classmethod
    def shared(cls, seed: int, plan, shape: Sequence[int], trees: dict, **options) -> "BrownianNoise":
        """A source for ``plan`` whose tree comes from (or goes into) ``trees``, one per seed and :meth:`tree_key`.

        ``options`` (lambda_range, max_depth, cache_bytes) go to :meth:`make_tree`.
        """
        key = (int(seed), *cls.tree_key(plan, shape, options.get("lambda_range")),
               options.get("max_depth", DEFAULT_DEPTH))
        tree = trees.get(key)
        if tree is None:
            tree = trees[key] = cls.make_tree(seed, plan, shape, **options)
        return cls(seed, plan, shape, tree=tree)

    @classmethod
    def for_plans(cls, seed: int, plans: Iterable, shape: Sequence[int], **options) -> list["BrownianNoise"]:
        """Sources for several plans, one tree per (schedule range, algorithm form).

        Plans on one schedule with the same form (++ or not) share one tree, hence one path and one cache.
        """
        trees: dict = {}
        return [cls.shared(seed, plan, shape, trees, **options) for plan in plans]

    @property
    def taus(self) -> np.ndarray:
        """tau of every grid point: exp(2 eta lambda), or -exp(-2 lambda) for the noise form."""
        return self.times if self.data else -self.times

    def dtau(self, step: int) -> float:
        """tau_{step+1} - tau_step, the variance of the step's Brownian increment."""
        self._check_step(step)
        dtau = abs(float(self.times[step + 1]) - float(self.times[step]))
        if not dtau > 0.0:
            raise ValueError(f"step {step} has zero length in tau: it cannot take Brownian noise")
        return dtau

    def _check_step(self, step: int) -> None:
        if not 0 <= step < len(self.times) - 1:
            raise ValueError(f"step {step} is outside this plan's steps 0..{len(self.times) - 2}")
        if not (self._finite[step] and self._finite[step + 1]):
            raise ValueError(
                f"step {step} reaches lambda = {self.plan.lambdas[step + 1]} (sigma = 0): that step takes no noise"
            )

    def increment(self, step: int) -> torch.Tensor:
        """B(tau_{step+1}) - B(tau_step) as a float64 CPU tensor (variance :meth:`dtau`)."""
        self._check_step(step)
        return self.tree.increment(float(self.times[step]), float(self.times[step + 1]))

    def _draw_times(self, index: int) -> tuple[float, float] | None:
        """The tree times of noise draw ``index`` when it is not grid step ``index`` (None when it is)."""
        span = self.plan.noise_spans.get(index)
        sigmas = self.plan.sigmas
        if span is None or (index < len(sigmas) - 1 and span == (float(sigmas[index]), float(sigmas[index + 1]))):
            return None
        lam = self.plan.schedule.coefficients(np.asarray(span, dtype=np.float64))[2]
        start, end = _tree_time(lam, self.data, self.eta)
        return float(start), float(end)

    def __call__(self, index: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """scale * z of noise draw ``index`` (the row's noise_index: the grid step, unless a step draws twice)."""
        if tuple(like.shape) != self.shape:
            raise ValueError(f"the noise source was built for shape {self.shape}; the latent has {tuple(like.shape)}")
        times = self._draw_times(index)
        if times is None:
            z = self.increment(index).mul_(scale / math.sqrt(self.dtau(index)))
        else:
            z = self.tree.increment(*times).mul_(scale / math.sqrt(abs(times[1] - times[0])))
        return z.to(device=like.device, dtype=like.dtype)


NOISE_KINDS = ("gaussian", "brownian", "k-diffusion")


def noise_source(kind: str, seed: int, plan, where: str = "--noise"):
    """``noise(index, like, scale)`` for a run of ``plan``: seeded Gaussian draws, the seed's Brownian path
    (built for the latent's shape on the first draw, so the caller need not know it), or k-diffusion's
    torchsde Brownian tree (``k-diffusion``: the noise k-diffusion and ComfyUI draw for that seed)."""
    if kind == "gaussian":
        return GaussianNoise(seed)
    if kind == "k-diffusion":
        return TreeNoise(seed, plan, where)
    if kind != "brownian":
        raise ConfigError(f"{where}: {kind!r} is not allowed; choose one of: {', '.join(NOISE_KINDS)}")
    sources: dict = {}

    def draw(step: int, like: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        shape = tuple(like.shape)
        if shape not in sources:
            sources[shape] = BrownianNoise(seed, plan, shape)
        return sources[shape](step, like, scale)

    return draw
