"""Ground truth: the exact probability-flow ODE solution of a mixture, to ~1e-10.

In lambda the probability-flow ODE of every process is dx/dlambda = alpha (x0(x, lambda) - c x), with
c = alpha for VP, c = 1 for flow and EDM (docs/mathematics.md), in that process's own variables.
With the mixture's exact x0 it is integrated by scipy's DOP853 in float64.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import NumericalError
from . import report
from .schedule import Schedule

VP = Schedule()  # the process of a reference that names none


#: A guard against a reference that would never finish: DOP853 needs under 1000 evaluations on
#: the shipped mixtures; a problem that needs this many is refused as a numerical failure.
MAX_EVALUATIONS = 50_000


def ode_solution(mixture, x_start: torch.Tensor, lambda_start: float, lambda_end: float, rtol: float = 1e-10, atol: float = 1e-12,
                 *, process: Schedule = VP) -> torch.Tensor:
    """x at lambda_end of the probability-flow ODE started from x_start at lambda_start (float64, CPU).

    ``process`` is the schedule whose variables x lives in (its ``ode_scales``). A non-finite
    right-hand side or more than ``MAX_EVALUATIONS`` evaluations is a NumericalError.
    """
    from scipy.integrate import solve_ivp

    x = x_start.detach().double().cpu()
    shape = x.shape
    if not torch.isfinite(x).all():
        raise NumericalError("reference ODE: the starting latents hold NaN or Inf")
    calls = [0]

    def rhs(lam, y):
        calls[0] += 1
        if calls[0] > MAX_EVALUATIONS:
            raise NumericalError(
                f"reference ODE: no solution after {MAX_EVALUATIONS} evaluations (lambda {lam:.4g} of "
                f"{lambda_start:.4g} to {lambda_end:.4g}); the mixture is too stiff to solve exactly"
            )
        state = torch.from_numpy(y).reshape(shape)
        alpha, sigma, c = process.ode_scales(lam)
        x0, _ = mixture.denoise(state, alpha, sigma)
        out = (alpha * (x0 - c * state)).reshape(-1).numpy()
        if not np.isfinite(out).all():
            raise NumericalError(f"reference ODE: the mixture's denoiser gave NaN or Inf at lambda {lam:.4g}")
        return out

    sol = solve_ivp(rhs, (lambda_start, lambda_end), x.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise NumericalError(f"reference ODE solver failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)


# Beyond this lambda (sigma ~ 6e-6) the flow of the shipped mixtures has converged to well below
# any solver's error; the limit sigma -> 0 is then the data prediction at that level. Narrower
# mixtures are integrated further, until sigma is FAR_STD_RATIO of their smallest std (the
# data prediction then differs from the limit by about (sigma / std)^2 / 2 relative to the std).
LAMBDA_FAR = 12.0
FAR_STD_RATIO = 1e-4


def far_lambda(mixture, lambda_start: float) -> float:
    """Where ode_limit stops integrating and takes the data prediction as the sigma -> 0 limit."""
    narrowest = float(np.min(mixture.stds))
    return max(LAMBDA_FAR, lambda_start + 1.0, math.log(1.0 / (FAR_STD_RATIO * narrowest)))


def ode_limit(mixture, x_start: torch.Tensor, lambda_start: float, lambda_end: float, rtol: float = 1e-10,
              *, process: Schedule = VP) -> torch.Tensor:
    """The exact ODE solution at lambda_end, which may be +inf (final sigma 0)."""
    if math.isfinite(lambda_end):
        return ode_solution(mixture, x_start, lambda_start, lambda_end, rtol=rtol, process=process)
    far = far_lambda(mixture, lambda_start)
    x = ode_solution(mixture, x_start, lambda_start, far, rtol=rtol, process=process)
    x0, _ = mixture.denoise(x, *process.alpha_sigma(far))
    return x0


def default_cache_dir() -> Path:
    base = os.environ.get("DPMCLI_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dpmcli")
    return Path(base)


CACHE_FORMAT = 2  # 2: every entry has a JSON record beside it with its shape, dtype and sha256


class CacheDirError(Exception):
    """Internal: why a cache folder cannot be used (turned into a ConfigError naming the option)."""


def check_cache_dir(directory: Path) -> str | None:
    """None when reference solutions can be written to ``directory`` (created if missing), else why not.

    A path that is a file, or lies under one, raises CacheDirError. A folder that cannot be
    written or created is not an error: it is read (when it exists) and nothing is stored.
    """
    directory = Path(directory)
    for parent in (directory, *directory.parents):
        if parent.exists():
            if not parent.is_dir():
                raise CacheDirError(f"{parent} is a file, not a folder" if parent == directory else f"{parent} is a file, so {directory} cannot be a folder")
            break
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CacheDirError(f"{directory} exists and is not a folder") from None
    except OSError as exc:
        return f"{directory} cannot be created ({exc.strerror or exc}); reference solutions are not cached"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
    except OSError as exc:
        return f"{directory} is not writable ({exc.strerror or exc}); reference solutions are read from it but not cached"
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return None


def _json_safe(value):
    """Standard JSON: a non-finite number (a lambda of +inf) is written as its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class ReferenceCache:
    """Reference solutions on disk, keyed by a hash of everything they depend on.

    A key is built from a JSON description (kind, schedule, lambdas, solver settings, ...) and the
    raw bytes of the arrays involved (mixture parameters, x_T); a changed input gives a new key.
    ``directory=None`` disables the cache; ``writable=False`` reads it and stores nothing.

    Each entry is ``KIND-KEY.npy`` with ``KIND-KEY.json`` beside it (shape, dtype, sha256 of the
    array's bytes, the description). An entry is trusted only if the record parses, the array
    loads with the expected shape and dtype, its checksum matches and every value is finite;
    otherwise it is recomputed and rewritten, and ``warnings`` says so. Both files are written to
    a temporary file and renamed into place (the record last), so a reader never sees half a file.
    """

    def __init__(self, directory: Path | None, writable: bool = True):
        self.directory = None if directory is None else Path(directory)
        self.writable = writable
        self.hits = 0
        self.misses = 0
        self.warnings: list[str] = []
        self._write_warned = False

    @staticmethod
    def key(description: dict, arrays: tuple[np.ndarray, ...] = ()) -> str:
        digest = hashlib.sha256(json.dumps({"cache_format": CACHE_FORMAT, **description}, sort_keys=True, default=str).encode())
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:32]

    def _read(self, path: Path, record_path: Path, shape, dtype) -> tuple[np.ndarray | None, str | None]:
        """(array, None) for a sound entry, (None, None) for no entry, (None, why) for a damaged one."""
        if not path.exists() and not record_path.exists():
            return None, None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
                return None, "its record has no checksum"
        except FileNotFoundError:
            return None, "its checksum record is missing"
        except (OSError, ValueError) as exc:
            return None, f"its record cannot be read ({type(exc).__name__})"
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None, "the array file is missing"
        except Exception as exc:  # a truncated or garbled .npy raises anything from ValueError to SyntaxError
            return None, f"the array cannot be read ({type(exc).__name__})"
        if not isinstance(array, np.ndarray):
            return None, "it is not one array"
        if shape is not None and tuple(array.shape) != tuple(shape):
            return None, f"shape {tuple(array.shape)} instead of {tuple(shape)}"
        if dtype is not None and array.dtype != np.dtype(dtype):
            return None, f"dtype {array.dtype} instead of {np.dtype(dtype)}"
        if list(array.shape) != record.get("shape") or array.dtype.str != record.get("dtype"):
            return None, "it does not match its record"
        if _sha256(array) != record["sha256"]:
            return None, "checksum mismatch"
        if not np.isfinite(array).all():
            return None, "it holds NaN or Inf"
        return array, None

    def _write(self, path: Path, record_path: Path, array: np.ndarray, description: dict) -> bool:
        if not self.writable:
            return False
        record = {
            "cache_format": CACHE_FORMAT, "shape": list(array.shape), "dtype": array.dtype.str,
            "sha256": _sha256(array), "description": description,
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            report.save_npy(path, array)
            text = json.dumps(_json_safe(record), sort_keys=True, default=str, indent=1) + "\n"
            report.atomic_write(record_path, lambda handle: handle.write(text.encode()))
            return True
        except OSError as exc:
            if not self._write_warned:
                self._write_warned = True
                self.warnings.append(
                    f"reference cache: cannot write to {self.directory} ({exc.strerror or exc}); results are not cached"
                )
            return False

    def get_or_compute(self, description: dict, arrays: tuple[np.ndarray, ...], compute, shape=None, dtype=None) -> torch.Tensor:
        """The cached value for (description, arrays), else ``compute()`` (stored when the cache is writable).

        ``shape`` and ``dtype``, when given, are what a cached array must have to be trusted.
        """
        if self.directory is None:
            self.misses += 1
            return compute()
        stem = f"{description.get('kind', 'reference')}-{self.key(description, arrays)}"
        path, record_path = self.directory / f"{stem}.npy", self.directory / f"{stem}.json"
        array, damage = self._read(path, record_path, shape, dtype)
        if array is not None:
            self.hits += 1
            return torch.from_numpy(array)
        self.misses += 1
        value = compute()
        result = value.detach().cpu().numpy()
        if not np.isfinite(result).all():
            raise NumericalError(f"reference {description.get('kind', 'solution')}: the ground truth holds NaN or Inf")
        written = self._write(path, record_path, result, description)
        if damage is not None:
            action = "recomputed and rewritten" if written else "recomputed (not rewritten: the cache is not writable)"
            self.warnings.append(f"reference cache: {path.name} was damaged ({damage}); {action}")
        return value
