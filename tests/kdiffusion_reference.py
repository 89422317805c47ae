"""k-diffusion 0.1.1's ``sampling`` module, loaded without its training dependencies, to run against.

The package's ``__init__`` imports its training code (PIL, torchvision, wandb, ...); ``sampling.py``
itself needs torch, scipy, torchdiffeq, torchsde, tqdm and one helper of ``k_diffusion.utils``
(``append_dims``). The file is read from an installed k_diffusion, else from the published wheel
(``pip download --no-deps``, kept under pytest's cache directory), and executed under a stub
package that supplies that one helper. None (and the reason) when neither can be had.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path

VERSION = "0.1.1"
_LOADED: dict = {}


def _append_dims(x, target_dims: int):
    """x with trailing singleton dimensions up to ``target_dims`` (what sampling.to_d needs)."""
    if target_dims < x.ndim:
        raise ValueError(f"input has {x.ndim} dims, more than {target_dims}")
    return x.reshape(*x.shape, *([1] * (target_dims - x.ndim)))


def _source(cache: Path) -> str:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
        if path.exists():
            return path.read_text()
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"k_diffusion-{VERSION}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        f"k-diffusion=={VERSION}", "-d", str(cache)], check=True, capture_output=True, timeout=180)
        wheels = sorted(cache.glob(f"k_diffusion-{VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read("k_diffusion/sampling.py").decode()


def load_sampling(cache: Path):
    """(module, None) or (None, why not)."""
    if "module" in _LOADED or "why" in _LOADED:
        return _LOADED.get("module"), _LOADED.get("why")
    try:
        for needed in ("torchsde", "torchdiffeq", "tqdm"):
            importlib.import_module(needed)
        source = _source(cache)
        package = types.ModuleType("_kdiffusion_stub")
        package.__path__ = []
        utils = types.ModuleType("_kdiffusion_stub.utils")
        utils.append_dims = _append_dims
        package.utils = utils
        module = types.ModuleType("_kdiffusion_stub.sampling")
        module.__package__ = "_kdiffusion_stub"
        sys.modules.update({"_kdiffusion_stub": package, "_kdiffusion_stub.utils": utils})
        exec(compile(source, f"k_diffusion-{VERSION}/sampling.py", "exec"), module.__dict__)
        _LOADED["module"] = module
    except Exception as exc:  # no network, no wheel, a missing light dependency: the tests that need it skip
        _LOADED["why"] = f"k-diffusion {VERSION}'s sampling module is not available ({type(exc).__name__}: {exc})"
    return _LOADED.get("module"), _LOADED.get("why")
