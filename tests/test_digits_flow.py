"""The digits network trained by rectified flow (`--model digits-flow`): files, floors, training, Euler, errors.

The floors come from digits-flow.json, where they were stored (measured value minus a margin)
when the weights were made; nothing here is typed in by hand.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from dpmcli import ConfigError, SolverConfig
from dpmcli.api import DPMSolver
from dpmcli.cli.main import app
from dpmcli.coefficients import prediction_of
from dpmcli.models import digits as D
from dpmcli.models import load_model
from dpmcli.schedule import FlowSchedule
from dpmcli.training import ITERATIONS

WEIGHTS, CONFIG, _, _ = D.model_files("flow")
SHIPPED = json.loads((D.DATA_DIR / CONFIG).read_text())
VP = json.loads((D.DATA_DIR / D.CONFIG_FILE).read_text())
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_shipped_files_describe_a_flow_model_beside_the_vp_one():
    assert WEIGHTS == "digits-flow.safetensors" and CONFIG == "digits-flow.json"
    assert (D.DATA_DIR / WEIGHTS).stat().st_size < 5_000_000
    assert SHIPPED["model"] == "digits-flow" and set(SHIPPED) == set(VP)  # the same structure as digits.json
    assert SHIPPED["architecture"] == VP["architecture"] and SHIPPED["data"] == VP["data"]
    assert SHIPPED["scheduler"] == {"num_train_timesteps": 1000, "use_flow_sigmas": True, "flow_shift": 1.0,
                                    "prediction_type": "flow_prediction"}
    # one yardstick for both: the classifier and the digits are the VP model's files
    assert SHIPPED["classifier"] == VP["classifier"] and SHIPPED["real"] == VP["real"]
    recipe = {k: SHIPPED["training"][k] for k in ("batch_size", "lr", "ema_decay", "label_dropout", "seed", "threads")}
    assert recipe == {k: VP["training"][k] for k in recipe}
    # the one difference: fewer iterations, chosen by the held-out digits' loss (docs/digits.md)
    assert SHIPPED["training"]["iterations"] == ITERATIONS["flow"] == 2500 and VP["training"]["iterations"] == ITERATIONS["vp"]


def test_the_model_steps_on_a_flow_grid_without_options():
    model = load_model("digits-flow", device="cpu")
    assert model.name == "digits-flow" and model.prediction_type == "flow_prediction" and model.process == "flow"
    options = model.schedule_options
    assert options == {"process": "flow", "flow_shift": 1.0, "train_steps": 1000, "prediction_type": "flow_prediction"}
    cfg = SolverConfig(**options).validated()
    assert cfg.process == "flow" and cfg.prediction_type == "flow_prediction"
    assert model.identity()["model"] == "digits-flow" and load_model("digits", device="cpu").identity()["model"] == "digits"
    assert model.describe()["name"] == "digits-flow" and model.describe()["weights"] == "shipped"


@pytest.mark.parametrize("key", ["guidance_2", "unconditional"])
def test_samples_at_20_steps_meet_the_floors(key):
    setup = SHIPPED["quality"]["setup"]
    model = D.load_digits_model(process="flow", class_label=None if key == "unconditional" else "all",
                                guidance_scale=None if key == "unconditional" else 2.0)
    samples = D.sample_digits(model, setup["batch"], seed=setup["seed"], steps=setup["steps"], algo=setup["algo"], order=setup["order"])
    quality = model.quality(samples)
    floors = SHIPPED["floors"][key]
    assert quality["classifier_confidence"] >= floors["classifier_confidence"]
    if "class_accuracy" in floors:
        assert quality["class_accuracy"] >= floors["class_accuracy"]
    assert min(quality["class_shares"].values()) > 0.02  # every digit appears
    assert 0.5 * quality["real_nn_distance"] < quality["nn_distance"] < 2.0 * quality["real_nn_distance"]


def test_training_noises_through_the_flow_schedule():
    schedule = FlowSchedule()
    t = schedule.training_timesteps(torch.tensor([0.0, 0.25, 0.999999], dtype=torch.float64))
    assert t.tolist() == pytest.approx([1000.0, 750.0, 0.001])  # s = 1 - u in (0, 1]: pure noise included
    alpha, sigma = schedule.noise_levels(t)
    for k in range(3):
        assert (alpha[k].item(), sigma[k].item()) == pytest.approx(schedule.noise_level(t[k].item()))
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(prediction_of("flow_prediction", x0, eps, alpha[:, None], sigma[:, None]), eps - x0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpm_solver_1_is_a_hand_written_flow_euler_loop(shift):
    model = D.load_digits_model(process="flow", dtype=torch.float64, class_label="all", guidance_scale=2.0)
    solver = DPMSolver(seed=0, **{**model.schedule_options, "algo": "dpmsolver++", "order": 1, "steps": 6, "flow_shift": shift})
    x_T = solver.initial_latents((20, 1, 8, 8), dtype=torch.float64)
    x = x_T.clone()
    for t in solver.timesteps:
        x = solver.step(model(x, t), t, x)
    euler, s = x_T.clone(), solver.sigmas
    assert s[-1] == 0.0 and solver.timesteps == pytest.approx([1000.0 * v for v in s[:-1]])  # the network is told 1000 s
    for i, t in enumerate(solver.timesteps):
        euler = euler + (s[i + 1] - s[i]) * model(euler, t)  # x <- x + (s_next - s) v
    assert (x - euler).abs().max().item() < 1e-10 * x_T.abs().max().item()


def _tiny(out, **options):
    from dpmcli.training import train_digits

    return train_digits(out, process="flow", seed=3, iterations=4, classifier_epochs=1, hidden=32, blocks=1, embedding=16,
                        batch_size=32, evaluation_batch=20, **options)


def test_flow_training_writes_its_files_atomically_and_repeats_bit_for_bit(tmp_path):
    pytest.importorskip("sklearn")
    stages = set()
    document = _tiny(tmp_path / "m", progress=lambda stage, done, total: stages.add(stage))
    assert stages == {"classifier", "denoiser", "evaluation"}
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == sorted(D.model_files("flow"))  # no staging folder left, no VP files
    assert document["model"] == "digits-flow" and document["scheduler"] == SHIPPED["scheduler"]
    assert "velocity" in document["training"]["loss"] and document["training"]["iterations"] == 4
    model = load_model(f"digits-flow:{tmp_path / 'm'}", device="cpu", class_label="5")
    assert model.describe()["weights"] == str(tmp_path / "m") and model(torch.zeros(2, 1, 8, 8), 500.0).shape == (2, 1, 8, 8)
    again = _tiny(tmp_path / "n")
    for name in D.model_files("flow")[::2] + (D.CLASSIFIER_FILE,):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "n" / name).read_bytes()
    assert again["quality"] == document["quality"]
    # the classifier and data do not depend on the process: a VP run of the same seed writes the same bytes
    from dpmcli.training import train_digits

    train_digits(tmp_path / "v", seed=3, iterations=1, classifier_epochs=1, hidden=16, blocks=1, embedding=8, batch_size=32,
                 evaluation_batch=10)
    for name in (D.CLASSIFIER_FILE, D.DATA_FILE):
        assert (tmp_path / "v" / name).read_bytes() == (tmp_path / "m" / name).read_bytes()


def test_a_failed_flow_write_leaves_nothing(tmp_path):
    from dpmcli.training import FLOW_SCHEDULE, write_model

    net, classifier = D.DigitsNet(16, 1, 8), D.DigitsClassifier()
    data = D.load_data(D.DATA_DIR / D.DATA_FILE)
    document = {"format": 1, "model": "digits-flow", "architecture": net.architecture, "scheduler": dict(FLOW_SCHEDULE)}

    def measure(staging):
        assert sorted(p.name for p in staging.iterdir()) == sorted(D.model_files("flow"))
        assert D.load_digits_model(staging, process="flow")(torch.zeros(2, 1, 8, 8), 10.0).shape == (2, 1, 8, 8)
        raise OSError(28, "No space left on device")

    with pytest.raises(ConfigError, match="--out: cannot write into"):
        write_model(tmp_path / "new" / "c", net=net, classifier=classifier, data=data, document=document, measure=measure,
                    process="flow")
    assert not (tmp_path / "new").exists()


def test_sample_and_compare_run_on_the_flow_grid(tmp_path):
    result = invoke("sample", "--model", "digits-flow", "--batch", 50, "-f", "json", "-q")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["config"]["process"], document["config"]["prediction_type"]) == ("flow", "flow_prediction")
    assert document["config"]["flow_shift"] == 1.0 and document["sigmas"][0] == pytest.approx(0.999) and document["nfe"] == 20
    assert document["model"]["guidance_scale"] == 2.0
    assert document["quality"]["class_accuracy"] >= SHIPPED["floors"]["guidance_2"]["class_accuracy"]
    result = invoke("compare", "--model", "digits-flow", "--algo", "dpmsolver++", "--order", "1,2", "--steps", "4,8,16",
                    "--batch", 40, "--reference-steps", 60, "--flow-shift", 3, "--no-cache", "-f", "json", "-q",
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["reference"]["kind"] == "reference run" and doc["config"]["base"]["flow_shift"] == 3.0
    errors = {(r["order"], r["steps"]): r["error"] for r in doc["runs"]}
    for order in (1, 2):
        assert errors[(order, 4)] > errors[(order, 8)] > errors[(order, 16)]
    assert (tmp_path / "out" / "samples.png").is_file()


@pytest.mark.parametrize("args, option", [
    (("train", "digits", "--process", "edm", "--out", "x"), "--process: 'edm' is not allowed"),
    (("sample", "--model", "digits-flow", "--process", "vp"), "--process: 'vp' is not allowed with --model digits-flow"),
    (("sample", "--model", "digits", "--process", "flow"), "--process: 'flow' is not allowed with --model digits"),
    (("sample", "--model", "digits-flow", "--beta-schedule", "linear"), "--beta-schedule: applies to --process vp only"),
    (("sample", "--model", "digits-flow", "--beta-start", "0.001"), "--beta-start: applies to --process vp only"),
    (("compare", "--model", "digits-flow", "--process", "vp", "--steps", "2", "--out", "x"), "--process: 'vp' is not allowed"),
    (("sample", "--model", "digits-flow:"), "--model: 'digits-flow:' needs a folder"),
    (("sample", "--model", "digits-flow:x"), "--model digits-flow: x is not a folder"),
    (("sample", "--model", "digits-flow", "--prompt", "a cat"), "--prompt: the digits-flow model takes --class"),
    (("sample", "--model", "digits-flow", "--class", "12"), "--class"),
    (("sample", "--model", "digits-flows"), "--model: 'digits-flows' is not allowed; choose one of:"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "-q")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dpmcli: error: {option}"), result.stderr
    assert not (tmp_path / "x").exists()


def test_a_vp_json_is_not_read_as_a_flow_model(tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(D.DATA_DIR, folder, ignore=shutil.ignore_patterns("gmm*", "__*"))
    (folder / CONFIG).write_text(json.dumps({**SHIPPED, "scheduler": VP["scheduler"]}))
    with pytest.raises(ConfigError, match="--model digits-flow: .* has no use_flow_sigmas"):
        D.load_digits_model(folder, process="flow")
    (folder / CONFIG).write_text(json.dumps({**SHIPPED, "scheduler": {**SHIPPED["scheduler"], "use_flow_sigmas": False}}))
    with pytest.raises(ConfigError, match="does not describe a flow schedule"):
        D.load_digits_model(folder, process="flow")
