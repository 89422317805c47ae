"""Reference runs of networks cached on disk: keyed by the model's identity (weights by content), the
reference plan, the conditioning, the guidance scale, x_T and the reference steps."""

import shutil

import pytest
import torch

from dpmcli import SolverConfig
from dpmcli import report
from dpmcli.brownian import BrownianNoise
from dpmcli.ground_truth import ReferenceRuns
from dpmcli.models import digits as D
from dpmcli.models.base import file_digest, files_digest, folder_files
from dpmcli.noise import initial_latents
from dpmcli.plan import build_plan

BATCH, STEPS = 4, 10


@pytest.fixture(scope="module")
def model():
    return D.load_digits_model()


def _plan(model, algo="dpmsolver++"):
    return build_plan(SolverConfig(**model.schedule_options, algo=algo, order=2, steps=5))


def _x_T(plan, seed=0):
    return initial_latents(seed, (BATCH, *D.IMAGE_SHAPE), "cpu", torch.float32, plan.schedule.init_noise_sigma)


def _reference(model, cache_dir, *, seed=0, steps=STEPS, guidance_scale=None, algo="dpmsolver++", cached_seed=True, **options):
    """(the reference for a 5-step plan, the ReferenceRuns that made it): one compare-like process."""
    plan = _plan(model, algo)
    x_T = _x_T(plan, seed)
    runs = ReferenceRuns(model, x_T, steps, seed=seed if cached_seed else None, cache_dir=cache_dir, **options)
    trees: dict = {}
    noise_for = lambda fine: BrownianNoise.shared(seed, fine, x_T.shape, trees)  # noqa: E731
    return runs.reference(plan, noise_for, guidance_scale), runs


def _entries(folder):
    return sorted(p.name for p in folder.glob("network-*.npy")) if folder.exists() else []


def test_a_second_run_hits_the_cache_with_identical_tensors(model, tmp_path):
    first, runs = _reference(model, tmp_path)
    described = runs.describe()
    assert (described["cache_hits"], described["cache_misses"]) == (0, 1) and described["cache"] == str(tmp_path)
    assert described["reference_nfe"] > 0
    [entry] = _entries(tmp_path)
    assert entry.startswith("network-ode-") and (tmp_path / entry.replace(".npy", ".json")).is_file()

    second, again = _reference(model, tmp_path)
    assert again.describe()["cache_hits"] == 1 and again.describe()["cache_misses"] == 0
    assert again.nfe == 0  # nothing was run
    assert second.dtype == first.dtype == torch.float64 and torch.equal(first, second)
    assert _entries(tmp_path) == [entry]


def test_sde_references_are_cached_with_the_seed_of_their_path(model, tmp_path):
    first, _ = _reference(model, tmp_path, algo="sde-dpmsolver++")
    second, runs = _reference(model, tmp_path, algo="sde-dpmsolver++")
    assert runs.cache.hits == 1 and torch.equal(first, second)
    assert any(name.startswith("network-sde-") for name in _entries(tmp_path))
    # without the seed the path is unknown: computed, never cached
    _, unseeded = _reference(model, tmp_path / "unseeded", algo="sde-dpmsolver++", cached_seed=False)
    assert _entries(tmp_path / "unseeded") == [] and unseeded.cache.hits == 0


@pytest.fixture()
def altered_weights(tmp_path):
    """A copy of the shipped digits folder with one byte of the weights changed (a sign bit of the last float16)."""
    folder = tmp_path / "altered"
    shutil.copytree(D.DATA_DIR, folder)
    weights = folder / D.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))
    return folder


@pytest.mark.parametrize("change", ["guidance", "class", "seed", "steps", "weights"])
def test_what_the_reference_depends_on_is_in_its_key(model, tmp_path, altered_weights, change):
    cache = tmp_path / "cache"
    base, _ = _reference(model, cache)
    variant = {
        "guidance": lambda: _reference(model, cache, guidance_scale=3.0),
        "class": lambda: _reference(D.load_digits_model(class_label=3), cache),
        "seed": lambda: _reference(model, cache, seed=1),
        "steps": lambda: _reference(model, cache, steps=STEPS + 2),
        "weights": lambda: _reference(D.load_digits_model(altered_weights), cache),
    }[change]
    other, runs = variant()
    assert (runs.cache.hits, runs.cache.misses) == (0, 1), change
    assert len(_entries(cache)) == 2
    assert not torch.equal(base, other)


def test_the_weights_are_known_by_content_not_by_path(model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(D.DATA_DIR, copy)
    first, _ = _reference(model, tmp_path / "cache")
    second, runs = _reference(D.load_digits_model(copy), tmp_path / "cache")
    assert runs.cache.hits == 1 and torch.equal(first, second)
    assert D.load_digits_model(copy).identity() == model.identity()


def test_a_read_only_cache_is_read_and_never_written(model, tmp_path):
    first, _ = _reference(model, tmp_path / "cache")
    # cache_writable=False (what compare passes for a folder it cannot write): entries are read...
    second, runs = _reference(model, tmp_path / "cache", cache_writable=False)
    assert runs.cache.hits == 1 and torch.equal(first, second)
    # ... and a miss is computed but not stored
    _, runs = _reference(model, tmp_path / "cache", seed=5, cache_writable=False)
    assert runs.cache.misses == 1 and len(_entries(tmp_path / "cache")) == 1 and runs.cache.warnings == []


def test_a_folder_that_refuses_writes_still_works_with_a_note(model, tmp_path, monkeypatch):
    def refuse(path, array):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report, "save_npy", refuse)
    value, runs = _reference(model, tmp_path / "cache")
    assert torch.isfinite(value).all() and _entries(tmp_path / "cache") == []
    [note] = runs.cache.warnings
    assert "cannot write" in note and "not cached" in note


def test_without_a_cache_folder_or_an_identity_nothing_is_cached(model, tmp_path, monkeypatch):
    _, runs = _reference(model, None)
    assert runs.describe()["cache"] is None and "cache_note" not in runs.describe()
    monkeypatch.setattr(D.DigitsModel, "identity", lambda self: None)
    _, runs = _reference(model, tmp_path / "cache")
    described = runs.describe()
    assert described["cache"] is None and "not cached" in described["cache_note"]
    assert _entries(tmp_path / "cache") == []


def test_file_digests_are_streamed_and_remembered_per_size_and_mtime(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * (3 << 20))
    first = file_digest(path)
    assert file_digest(path) == first
    path.write_bytes(b"b" * (3 << 20))
    assert file_digest(path) != first  # another mtime: hashed again
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")
    (tmp_path / ".hidden").write_text("x")
    names = [name for name, _ in folder_files(tmp_path)]
    assert names == ["sub/config.json", "weights.bin"]
    copy = tmp_path.parent / (tmp_path.name + "-copy")
    shutil.copytree(tmp_path, copy)
    assert files_digest(folder_files(copy)) == files_digest(folder_files(tmp_path))
    assert folder_files(tmp_path, skip=("sub",)) == [("weights.bin", path)]


def test_a_diffusers_model_is_known_by_the_contents_of_its_folder(tmp_path):
    pytest.importorskip("diffusers")
    from tiny_diffusers import make_unet_folder

    from dpmcli.models.hf import load_diffusers_model

    folder = make_unet_folder(tmp_path / "unet")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    first = load_diffusers_model(str(folder), device="cpu", dtype="float32").identity()
    assert first is not None and first["model"] == "diffusers" and first["device"] == "cpu"
    assert load_diffusers_model(str(copy), device="cpu", dtype="float32").identity() == first
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))
    assert load_diffusers_model(str(copy), device="cpu", dtype="float32").identity()["files_sha256"] != first["files_sha256"]
