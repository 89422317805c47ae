"""dpmcli tune and step recipes: the search beats every stock grid on held-out x_T, a recipe round-trips and
runs the same samples everywhere it is read (sample, compare, the drop-in scheduler), and bad recipes or
contradicting options are one line with exit 2."""

import json
import math

import pytest
import torch
from test_cli_edges import invoke, one_line_error

from dpmcli import SolverConfig, build_plan
from dpmcli.errors import ConfigError
from dpmcli.models import MixtureModel, ring
from dpmcli.noise import initial_latents
from dpmcli.recipe import RECIPE_FORMAT, load_recipe
from dpmcli.reference import ode_limit
from dpmcli.sampler import sample
from dpmcli.tune import FREE_FINAL_SIGMA, Grid, TuneSpec, interquartile_mean, steps_for_budget, tune

QUICK = dict(model="ring", batch=512, train_batch=128, evaluations=80)


@pytest.fixture(scope="module")
def ring5():
    return tune(TuneSpec(nfe=5, **QUICK))


def test_tuned_grid_beats_every_stock_grid_on_held_out_inputs(ring5):
    best = ring5.best_stock
    assert ring5.tuned.held_out_error < best.held_out_error / 2, (ring5.tuned.held_out_error, best.label, best.held_out_error)
    assert all(ring5.tuned.held_out_error < s.held_out_error for s in ring5.stock)
    plan = build_plan(ring5.recipe.config)
    assert plan.nfe == 5 and plan.sigmas[0] == build_plan(SolverConfig(steps=5)).sigmas[0]
    assert ring5.recipe.target_sigma == 0.0  # scored at the clean end point, wherever its last step lands


def test_held_out_error_is_the_exact_ode_error_on_other_seeds(ring5):
    """Recomputed from scratch: the recipe's grid on seed 0's x_T against DOP853's end point."""
    x = initial_latents(0, (512, 2), "cpu", torch.float32)
    plan = build_plan(ring5.recipe.config)
    out = sample(plan, MixtureModel(ring()).bind(plan), x.double()).samples
    reference = ode_limit(ring(), x.double(), float(plan.lambdas[0]), math.inf, process=plan.schedule)
    error = (out - reference).norm(dim=1).median().item()
    assert error == pytest.approx(ring5.tuned.held_out_error, rel=1e-3)
    assert ring5.recipe.training["seed"] != ring5.recipe.held_out["seed"]


def test_search_is_deterministic(ring5):
    again = tune(TuneSpec(nfe=5, **QUICK))
    assert again.recipe.config.sigmas == ring5.recipe.config.sigmas


def test_the_loss_is_the_mean_of_the_middle_half():
    values = torch.tensor([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0])
    assert interquartile_mean(values) == 4.5  # 3, 4, 5, 6
    values[0] = 1e9  # an outlier moves a mean, not this loss
    assert interquartile_mean(values) == 4.5


def test_grid_parameters_round_trip_a_stock_grid():
    plan = build_plan(SolverConfig(steps=6, spacing="logsnr"))
    grid = Grid(plan)
    sigmas = grid.sigmas(grid.theta_of(plan))
    assert sigmas == pytest.approx(tuple(plan.sigmas), rel=1e-9)
    free = Grid(plan, free=FREE_FINAL_SIGMA)
    theta = free.theta_of(plan)
    assert len(theta) == 7 and free.sigmas(theta)[:-1] == pytest.approx(tuple(plan.sigmas[:-1]), rel=1e-9)
    assert free.sigmas(theta)[-1] == pytest.approx(plan.sigmas[-2] / math.e, rel=1e-9)  # one unit of lambda further


def test_recipe_file_round_trips(ring5, tmp_path):
    path = tmp_path / "ring5.json"
    path.write_text(json.dumps(ring5.recipe.to_dict()))
    recipe = load_recipe(path)
    assert recipe.config == ring5.recipe.config and recipe.nfe == 5 and recipe.model == "ring"
    data = json.loads(path.read_text())
    assert data["format"] == RECIPE_FORMAT and len(data["grid"]["sigmas"]) == 6 and len(data["grid"]["timesteps"]) == 5


@pytest.mark.parametrize(
    "options, nfe, fragment",
    [
        ({"method": "adaptive"}, 10, "--method adaptive chooses its steps"),
        ({"method": "singlestep", "order": 2, "final_sigma": "sigma-min"}, 1, "--nfe: 1 is smaller than this method needs"),
        ({"startup": "singlestep", "order": 3}, 2, "makes at least 5 model calls"),
    ],
)
def test_budget_refusals(options, nfe, fragment):
    with pytest.raises(ConfigError, match=fragment):
        steps_for_budget(SolverConfig(**options), nfe)


def test_budget_fits_two_call_steps():
    cfg = steps_for_budget(SolverConfig(method="ancestral", order=2, algo="dpmsolver++"), 7)
    assert build_plan(cfg).nfe <= 7 and build_plan(cfg.with_options(steps=cfg.steps + 1)).nfe > 7


@pytest.fixture(scope="module")
def recipe_file(ring5, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipes") / "ring5.json"
    path.write_text(json.dumps(ring5.recipe.to_dict()))
    return path


def test_sample_with_recipe_runs_its_grid(recipe_file, tmp_path):
    out = tmp_path / "samples.npy"
    result = invoke("sample", "--recipe", recipe_file, "--batch", 64, "--save", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["config"]["sigmas"] == list(load_recipe(recipe_file).config.sigmas)
    assert "--recipe" in result.stderr  # it says where the grid comes from


def test_compare_scores_a_recipe_as_tune_did(ring5, recipe_file, tmp_path):
    result = invoke("compare", "--recipe", recipe_file, "--algo", "dpmsolver++", "--order", 2, "--steps", 5, "--batch", 512,
                    "--cache-dir", tmp_path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = {r["run"]: r for r in json.loads(result.stdout)["runs"]}
    tuned = next(r for r in rows.values() if r.get("recipe") == "ring5")
    assert tuned["run"].startswith("recipe ring5:") and tuned["nfe"] == 5
    assert tuned["error"] == pytest.approx(ring5.tuned.held_out_error, rel=1e-9)
    plain = next(r for r in rows.values() if not r.get("recipe"))
    assert plain["error"] > 2 * tuned["error"]


def test_dropin_scheduler_runs_the_recipe(recipe_file):
    pytest.importorskip("diffusers")
    from dpmcli.diffusers import DPMSolverScheduler

    scheduler = DPMSolverScheduler.from_recipe(recipe_file)
    scheduler.set_timesteps()
    recipe = load_recipe(recipe_file)
    model = MixtureModel(ring()).bind(scheduler.plan)
    x = initial_latents(3, (32, 2), "cpu", torch.float64)
    a = x.clone()
    for t in scheduler.timesteps:
        a = scheduler.step(model(a, t), t, a).prev_sample
    plan = build_plan(recipe.config)
    b = sample(plan, MixtureModel(ring()).bind(plan), x).samples
    assert (a - b).abs().max() < 1e-6  # float32 timesteps of a fractional grid
    with pytest.raises(ConfigError, match="is a 5-step grid"):
        scheduler.set_timesteps(20)


def test_schedule_and_plot_schedule_show_the_recipe(recipe_file, tmp_path):
    result = invoke("schedule", "--recipe", recipe_file, "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["sigmas"] == list(load_recipe(recipe_file).config.sigmas)
    assert set(document["stock_sigmas"]) == {"linspace", "karras", "logsnr"}
    figure = tmp_path / "grids.png"
    result = invoke("plot-schedule", "--recipe", recipe_file, "--spacing", "linspace,logsnr", "--out", figure)
    assert result.exit_code == 0 and figure.stat().st_size > 10_000


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_bad_recipes_are_one_line(recipe_file, tmp_path):
    good = json.loads(recipe_file.read_text())
    cases = [
        (write(tmp_path, "broken.json", "{not json"), "cannot read it as JSON"),
        (write(tmp_path, "other.json", {"format": "something-else"}), "not a recipe"),
        (write(tmp_path, "short.json", {"format": RECIPE_FORMAT, "model": "ring"}), "lacks process, nfe, config"),
        (write(tmp_path, "order.json", {**good, "config": {**good["config"], "order": 99}}), "config is not valid: --order: 99"),
        (write(tmp_path, "unknown.json", {**good, "config": {**good["config"], "warp": 2}}), "does not know (warp)"),
        (str(tmp_path / "missing.json"), "no such file"),
    ]
    for path, fragment in cases:
        one_line_error(invoke("sample", "--recipe", path), 2, "--recipe: ", fragment)


def test_recipe_for_another_model_or_contradicting_options(recipe_file, tmp_path):
    one_line_error(invoke("sample", "--recipe", recipe_file, "--model", "gmm64"), 2, "was tuned for --model ring", "not --model gmm64")
    one_line_error(invoke("sample", "--recipe", recipe_file, "--steps", 7), 2, "--steps: 7 contradicts --recipe")
    one_line_error(invoke("sample", "--recipe", recipe_file, "--order", 3), 2, "--order: 3 contradicts --recipe")
    one_line_error(invoke("compare", "--recipe", recipe_file, "--model", "gmm64", "--steps", 5), 2, "was tuned for --model ring")
    # a recipe that names digits but holds ring's schedule: digits was trained on other betas
    data = json.loads(recipe_file.read_text())
    other = write(tmp_path, "digits5.json", {**data, "model": "digits"})
    one_line_error(invoke("sample", "--recipe", other, "--batch", 4), 2, "was tuned with --beta", "another model")
    assert invoke("sample", "--recipe", recipe_file, "--steps", 5, "--batch", 8).exit_code == 0  # agreeing is fine


def test_tune_command_writes_a_recipe_and_refuses_shared_seeds(tmp_path):
    out = tmp_path / "r.json"
    result = invoke("tune", "--nfe", 4, "--batch", 256, "--train-batch", 64, "--evaluations", 30, "--no-cache", "--out", out,
                    "--format", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert load_recipe(out).nfe == 4 and document["tuned"]["held_out_error"] <= document["stock"][0]["held_out_error"]
    one_line_error(invoke("tune", "--train-seed", 0, "--out", tmp_path / "x.json"), 2, "--train-seed: 0 is the held-out --seed")
    assert not (tmp_path / "x.json").exists()
    one_line_error(invoke("tune", "--out", tmp_path / "x.txt"), 2, "--out:", "must end in .json")


def test_kept_stock_grid_is_a_loadable_recipe(tmp_path):
    result = tune(TuneSpec(nfe=1, model="ring", batch=64, train_batch=32, evaluations=20))
    path = tmp_path / "one.json"
    path.write_text(json.dumps(result.recipe.to_dict()))
    assert load_recipe(path).nfe == 1 and "kept" in result.tuned.label


def test_tune_refuses_compat():
    with pytest.raises(ConfigError, match="--compat: diffusers reproduces another library's grids"):
        tune(TuneSpec(base=SolverConfig(compat="diffusers"), nfe=5, **QUICK))


def test_hand_edited_recipes_are_one_line(recipe_file, tmp_path):
    good = json.loads(recipe_file.read_text())
    sigmas = good["grid"]["sigmas"]
    cases = [
        ({**good, "grid": {**good["grid"], "sigmas": ["x", *sigmas[1:]]}}, "malformed"),
        ({**good, "grid": {**good["grid"], "timesteps": [1.0, 2.0]}}, "grid.timesteps do not follow from grid.sigmas"),
        ({**good, "nfe": 7}, "says nfe 7 but its grid and solver make 5 model calls"),
        ({**good, "conditioning": "x"}, "conditioning must be dict"),
        ({**good, "grid": {"timesteps": None}}, "grid.sigmas must be the list"),
        ({**good, "target_sigma": 5.0}, "target_sigma 5.0 must be a number from 0"),
    ]
    for data, fragment in cases:
        one_line_error(invoke("sample", "--recipe", write(tmp_path, "edited.json", data)), 2, "--recipe: ", fragment)


def test_recipe_of_another_process_for_a_network(recipe_file, tmp_path):
    """A flow recipe under a VP network's name: refused for its process before anything runs."""
    data = json.loads(recipe_file.read_text())
    flow = {**data, "model": "digits", "process": "flow", "config": {**data["config"], "process": "flow", "prediction_type": "flow_prediction"}}
    flow["grid"] = {"sigmas": [0.999, 0.5, 0.2, 0.1, 0.05, 0.0]}
    one_line_error(invoke("sample", "--recipe", write(tmp_path, "flowdigits.json", flow), "--batch", 4), 2,
                   "is a --process flow recipe, but --model digits was trained on --process vp")
