"""The learned digits model: the shipped files, the guidance arithmetic, sample quality floors, training."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from dpmcli import ConfigError, SolverConfig
from dpmcli.api import DPMSolver
from dpmcli.cli.main import app
from dpmcli.models import digits as D
from dpmcli.models.base import guided

SHIPPED = json.loads((D.DATA_DIR / D.CONFIG_FILE).read_text())


@pytest.fixture(scope="module")
def model():
    return D.load_digits_model()


def _sample(model, batch, seed=0):
    """The evaluation the floors were measured with: DPM-Solver++(2M), 20 steps, x_T from the seed."""
    solver = DPMSolver(algo="dpmsolver++", order=2, steps=20, seed=seed, **model.schedule_options)
    x = solver.initial_latents((batch, 1, 8, 8))
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    return x


def test_shipped_files_are_small_and_load_without_scikit_learn():
    sizes = {name: (D.DATA_DIR / name).stat().st_size for name in D.FILES}
    assert sizes[D.WEIGHTS_FILE] < 5_000_000 and sizes[D.DATA_FILE] < 100_000
    code = (
        "import sys, torch; from dpmcli.models.digits import load_digits_model; m = load_digits_model(); "
        "q = m.quality(torch.zeros(10, 1, 8, 8)); "
        "print(sorted(n for n in ('sklearn', 'typer', 'rich', 'matplotlib') if n in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_contract_shapes_and_dtypes(model):
    assert model.name == "digits" and model.prediction_type == "epsilon" and model.sample_shape == (1, 8, 8)
    options = model.schedule_options
    assert set(options) == {"beta_schedule", "beta_start", "beta_end", "train_steps", "prediction_type", "spacing"}
    assert options["spacing"] == SHIPPED["scheduler"]["timestep_spacing"]
    SolverConfig(**options).validated()
    sched = SHIPPED["scheduler"]
    assert set(sched) >= {"num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "timestep_spacing"}
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = model(x, 512.25)
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()
    assert model(x.float(), torch.tensor(3.0)).dtype == torch.float32
    images = model.to_images(x * 3)
    assert images.shape == (7, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert model.labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    described = model.describe()
    assert described["name"] == "digits" and described["class_label"] == "all"
    assert described["guidance_scale"] == SHIPPED["sampling"]["guidance_scale"]


def test_network_signature():
    net = D.DigitsNet(hidden=16, blocks=1, embedding=8)
    out = net(torch.zeros(3, 1, 8, 8), torch.tensor([0.0, 499.5, 999.0]), torch.tensor([0, 9, D.NULL_CLASS]))
    assert out.shape == (3, 1, 8, 8)


def test_guidance_one_is_the_conditional_network_and_other_scales_mix_both():
    cond = D.load_digits_model(class_label=3, guidance_scale=1.0)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((5,), 700.0)
    threes = torch.full((5,), 3, dtype=torch.long)
    null = torch.full((5,), D.NULL_CLASS, dtype=torch.long)
    with torch.no_grad():
        c, u = cond.net(x, t, threes), cond.net(x, t, null)
    assert torch.equal(cond(x, 700.0), c)
    assert torch.equal(D.load_digits_model(class_label=None)(x, 700.0), u)
    with pytest.raises(ConfigError, match="--guidance-scale"):
        D.load_digits_model(class_label=None, guidance_scale=4.0)  # unconditional sampling is not guided
    assert torch.equal(D.load_digits_model(class_label=3, guidance_scale=0.0)(x, 700.0), u)
    # one batched forward for both halves: equal to separate forwards up to round-off
    torch.testing.assert_close(D.load_digits_model(class_label=3, guidance_scale=2.5)(x, 700.0), guided(u, c, 2.5), rtol=1e-5, atol=1e-5)


def test_class_and_guidance_validation():
    assert D.parse_class_label("7") == 7 and D.parse_class_label("none") is None and D.parse_class_label("all") == "all"
    for bad in ("10", "x", -1, True):
        with pytest.raises(ConfigError, match="--class"):
            D.parse_class_label(bad)
    with pytest.raises(ConfigError, match="--guidance-scale"):
        D.load_digits_model(guidance_scale=float("nan"))
    with pytest.raises(ConfigError, match="is missing"):
        D.load_digits_model(folder=D.DATA_DIR.parent)


def test_classifier_on_held_out_digits_is_above_its_floor(model):
    x, y = model.data.split(held_out=True)
    x_train, _ = model.data.split(held_out=False)
    assert len(y) == SHIPPED["data"]["held_out"] and len(x_train) == SHIPPED["data"]["train"]
    real = D.score(model.classifier, x, y, x_train)
    assert real["class_accuracy"] >= SHIPPED["floors"]["classifier_heldout_accuracy"]
    assert real["class_accuracy"] == pytest.approx(SHIPPED["real"]["class_accuracy"], abs=0.02)


@pytest.mark.parametrize("key", ["recommended", "unconditional"])
def test_samples_at_20_steps_meet_the_floors_and_repeat_bit_for_bit(key):
    guidance = SHIPPED["sampling"]["guidance_scale"]
    if key == "recommended":
        key = f"guidance_{guidance:g}"
        model = D.load_digits_model(class_label="all", guidance_scale=guidance)
    else:
        model = D.load_digits_model(class_label=None)
    setup = SHIPPED["quality"]["setup"]
    batch = setup["batch"]
    samples = _sample(model, batch, seed=setup["seed"])
    assert torch.equal(samples, _sample(model, batch, seed=setup["seed"]))
    quality = model.quality(samples)
    floors = SHIPPED["floors"][key]
    assert quality["classifier_confidence"] >= floors["classifier_confidence"]
    if "class_accuracy" in floors:
        assert quality["class_accuracy"] >= floors["class_accuracy"]
    else:
        assert quality["class_accuracy"] is None
    assert sum(quality["class_shares"].values()) == pytest.approx(1.0)
    assert min(quality["class_shares"].values()) > 0.02  # every digit appears
    # samples are digit-like (near some real digit), but not copies of the training set
    assert 0.5 * quality["real_nn_distance"] < quality["nn_distance"] < 2.0 * quality["real_nn_distance"]


def test_training_writes_a_loadable_model(tmp_path):
    pytest.importorskip("sklearn")
    from dpmcli.training import train_digits

    stages = set()
    document = train_digits(
        tmp_path / "m", seed=3, iterations=4, classifier_epochs=1, hidden=32, blocks=1, embedding=16, batch_size=32,
        evaluation_batch=20, progress=lambda stage, done, total: stages.add(stage),
    )
    assert stages == {"classifier", "denoiser", "evaluation"}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(D.FILES)  # no staging left behind
    assert document["training"]["iterations"] == 4 and document["architecture"]["hidden"] == 32
    model = D.load_digits_model(tmp_path / "m", class_label=5, guidance_scale=2.0)
    assert model.describe()["weights"] == str(tmp_path / "m")
    assert model(torch.zeros(2, 1, 8, 8), 10.0).shape == (2, 1, 8, 8)
    assert json.loads((tmp_path / "m" / D.CONFIG_FILE).read_text())["quality"]["runs"]["guidance_2"]["samples"] == 20
    again = train_digits(tmp_path / "n", seed=3, iterations=4, classifier_epochs=1, hidden=32, blocks=1, embedding=16,
                         batch_size=32, evaluation_batch=20)
    for name in (D.WEIGHTS_FILE, D.CLASSIFIER_FILE, D.DATA_FILE):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "n" / name).read_bytes()
    assert again["quality"] == document["quality"]


def test_denoiser_recipe_defaults_are_the_shipped_recipe():
    from dpmcli.training import DenoiserRecipe

    recipe = DenoiserRecipe()
    assert {k: SHIPPED["architecture"][k] for k in ("hidden", "blocks", "embedding")} == {
        "hidden": recipe.hidden, "blocks": recipe.blocks, "embedding": recipe.embedding
    }
    training = SHIPPED["training"]
    assert (training["batch_size"], training["lr"], training["ema_decay"], training["label_dropout"]) == (
        recipe.batch_size, recipe.lr, recipe.ema_decay, recipe.label_dropout
    )
    assert f"warm-up over {recipe.warmup} iterations" in training["lr_schedule"]


def test_write_model_moves_the_four_files_into_place_and_measures_the_staged_model(tmp_path):
    from dpmcli.training import DEFAULT_SCHEDULE, write_model

    net, classifier = D.DigitsNet(16, 1, 8), D.DigitsClassifier()
    data = D.load_data(D.DATA_DIR / D.DATA_FILE)
    document = {"format": 1, "architecture": net.architecture, "scheduler": dict(DEFAULT_SCHEDULE)}
    out, seen = tmp_path / "a" / "b", []

    def measure(staging):
        assert sorted(p.name for p in staging.iterdir()) == sorted(D.FILES)  # everything staged, nothing moved yet
        assert not (out / D.CONFIG_FILE).exists()
        staged = D.load_digits_model(staging, class_label=3)  # the staged files load as a model
        assert staged(torch.zeros(2, 1, 8, 8), 10.0).shape == (2, 1, 8, 8)
        seen.append(staging)
        document["quality"] = "measured"

    write_model(out, net=net, classifier=classifier, data=data, document=document, measure=measure)
    assert len(seen) == 1 and not seen[0].exists()  # the staging folder is gone
    assert sorted(p.name for p in out.iterdir()) == sorted(D.FILES)
    assert json.loads((out / D.CONFIG_FILE).read_text()) == document and document["quality"] == "measured"
    assert (D.load_data(out / D.DATA_FILE).labels == data.labels).all()

    def fails(staging):
        raise OSError(28, "No space left on device")

    with pytest.raises(ConfigError, match="--out: cannot write into .*No space left on device"):
        write_model(tmp_path / "new" / "c", net=net, classifier=classifier, data=data, document=document, measure=fails)
    assert not (tmp_path / "new").exists()  # the folders this run made went with it


def test_training_without_scikit_learn_says_how_to_install(monkeypatch, tmp_path):
    from dpmcli.training import train_digits

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ConfigError, match=r'pip install "dpmcli\[train\]"'):
        train_digits(tmp_path, iterations=1)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "cats", "--out", "x"], "TARGET: 'cats' is not allowed"),
        (["train", "digits", "--out", "x", "--iterations", "0"], "--iterations"),
        (["train", "digits", "--out", "x", "--minutes", "0"], "--minutes"),
        (["train", "digits", "--out", "x", "--format", "csv"], "--format"),
        (["train", "digits", "--out", "a-file"], "--out: a-file is a file"),
    ],
)
def test_train_command_rejects_bad_input_in_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "x").exists()


def test_train_command_writes_the_files_and_the_table(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from dpmcli import training

    real = training.train_digits

    def tiny(out, **kwargs):  # the command's options, on a network small enough for a test
        return real(out, **kwargs, classifier_epochs=1, hidden=16, blocks=1, embedding=8, batch_size=32, evaluation_batch=10)

    monkeypatch.setattr(training, "train_digits", tiny)
    result = CliRunner().invoke(app, ["train", "digits", "--out", str(tmp_path / "d"), "--iterations", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["training"]["iterations"] == 2 and document["training"]["seed"] == 0
    assert (tmp_path / "d" / D.WEIGHTS_FILE).is_file()
    table = CliRunner().invoke(app, ["train", "digits", "--out", str(tmp_path / "d"), "--iterations", "2", "--quiet"])
    assert table.exit_code == 0 and "real held-out digits" in table.stdout
