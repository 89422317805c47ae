"""diffusers' scheduler-config words read and written in one place (dpmcli.vocabulary).

* the reader and its inverse round-trip every spacing, sigma-grid flag, final sigma and schedule word;
* every user of diffusers' words reads through it: ``--model diffusers:`` scheduler configs,
  ``DPMSolverScheduler`` and the digits model's JSON give the same options and the same errors
  (two sigma-grid flags at once are refused everywhere; a sigmoid beta schedule is its table of
  betas everywhere);
* importing it loads no diffusers.
"""

import subprocess
import sys

import numpy as np
import pytest

from dpmcli.config import FINAL_SIGMAS, SolverConfig
from dpmcli.errors import ConfigError
from dpmcli.schedule import Schedule
from dpmcli.vocabulary import (
    SIGMA_FLAGS,
    TIMESTEP_SPACINGS,
    has_word,
    schedule_options,
    scheduler_words,
    sigmoid_betas,
    solver_options,
)

WHERE = "test config"
DIFFUSERS_SPACINGS = (*TIMESTEP_SPACINGS, *SIGMA_FLAGS.values())
SCHEDULE = {
    "train_steps": 500,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "v_prediction",
    "steps_offset": 1,
    "rescale_zero_snr": True,
    "lambda_min_clipped": -5.1,
    "thresholding": True,
    "dynamic_thresholding_ratio": 0.9,
    "sample_max_value": 1.5,
}


@pytest.mark.parametrize("final_sigma", FINAL_SIGMAS)
@pytest.mark.parametrize("spacing", DIFFUSERS_SPACINGS)
def test_schedule_words_round_trip(spacing, final_sigma):
    options = {**SCHEDULE, "spacing": spacing, "final_sigma": final_sigma}
    words = scheduler_words(options)
    assert schedule_options(words, WHERE) == options
    # one word for the grid: the timestep spacing or exactly one flag
    flags = [flag for flag in SIGMA_FLAGS if words.get(flag)]
    if spacing in TIMESTEP_SPACINGS:
        assert words["timestep_spacing"] == spacing and flags == []
    else:
        assert "timestep_spacing" not in words and [SIGMA_FLAGS[f] for f in flags] == [spacing]
    assert has_word("spacing", spacing)


def test_trained_betas_round_trip():
    betas = tuple(np.linspace(1e-4, 2e-2, 50).tolist())
    options = {"train_steps": 50, "trained_betas": betas}
    assert schedule_options(scheduler_words(options), WHERE) == options


def test_solver_words_round_trip():
    options = {"algo": "sde-dpmsolver++", "order": 3, "solver_type": "heun", "lower_order_final": False, "euler_at_final": True}
    words = scheduler_words(options)
    assert words == {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun",
                     "lower_order_final": False, "euler_at_final": True}
    assert solver_options(words) == options
    # other schedulers' words map as diffusers maps them
    assert solver_options({"algorithm_type": "deis", "solver_type": "bh2"}) == {"algo": "dpmsolver++", "solver_type": "midpoint"}


@pytest.mark.parametrize("spacing", ["time-uniform", "time-quadratic", "custom"])
def test_dpmcli_grids_have_no_diffusers_word(spacing):
    assert not has_word("spacing", spacing)
    assert scheduler_words({"spacing": spacing}) == {}
    assert not has_word("coefficients", "exact") and not has_word("method", "singlestep")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"beta_schedule": "linear", "use_karras_sigmas": True, "use_lu_lambdas": True},
         "test config sets use_karras_sigmas and use_lu_lambdas; use at most one of use_karras_sigmas, "),
        ({"beta_schedule": "linear", "use_flow_sigmas": True, "use_karras_sigmas": True},
         "sets use_flow_sigmas and use_karras_sigmas: diffusers then builds karras sigmas from its beta table"),
        ({"use_flow_sigmas": True, "use_dynamic_shifting": True, "time_shift_type": "linear"}, "time_shift_type 'linear'"),
        ({"use_flow_sigmas": True, "prediction_type": "sample_x"}, "prediction_type 'sample_x'; with a flow schedule"),
        ({"num_train_timesteps": 1000}, "describes neither a discrete VP"),
        ({"beta_schedule": "laplace"}, "beta_schedule 'laplace', which dpmcli does not have"),
        ({"beta_schedule": "linear", "prediction_type": "flow_prediction"}, "prediction_type 'flow_prediction'"),
        ({"beta_schedule": "linear", "timestep_spacing": "karras"}, "timestep_spacing 'karras'; dpmcli follows linspace, leading, trailing"),
        ({"beta_schedule": "linear", "final_sigmas_type": "sigma-min"}, "final_sigmas_type 'sigma-min'; dpmcli has zero and sigma_min"),
    ],
)
def test_reader_refuses_in_one_line(config, message):
    with pytest.raises(ConfigError, match=message) as caught:
        schedule_options(config, WHERE)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(WHERE)


def test_sigmoid_is_its_table_of_betas():
    options = schedule_options({"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 100}, WHERE)
    assert options == {"train_steps": 100, "trained_betas": sigmoid_betas(100, 0.0001, 0.02)}
    assert SolverConfig(**options).validated().train_steps == 100


def test_digits_json_reads_through_the_vocabulary():
    from dpmcli.models.digits import DigitsModel
    from dpmcli.training import DEFAULT_SCHEDULE

    model = DigitsModel()
    sched = model.config["scheduler"]
    # what the digits model read from its JSON before the vocabulary held the words
    assert model.schedule_options == {
        "beta_schedule": sched["beta_schedule"],
        "beta_start": float(sched["beta_start"]),
        "beta_end": float(sched["beta_end"]),
        "train_steps": int(sched["num_train_timesteps"]),
        "prediction_type": sched["prediction_type"],
        "spacing": "linspace",
    }
    # training writes the same words, in the same order, as the shipped JSON holds
    assert list(DEFAULT_SCHEDULE) == ["num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "timestep_spacing"]
    assert DEFAULT_SCHEDULE == sched


def test_importing_the_vocabulary_loads_no_diffusers():
    code = "import sys, dpmcli.vocabulary; print(sorted({'diffusers', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_schedule_tables_are_computed_once_and_read_only():
    schedule = Schedule.from_config(SolverConfig())
    assert schedule.lambdas is schedule.lambdas and schedule.sigmas is schedule.sigmas
    assert not schedule.lambdas.flags.writeable and not schedule.sigmas.flags.writeable
    abar = schedule.alphas_cumprod
    np.testing.assert_array_equal(schedule.lambdas, 0.5 * (np.log(abar) - np.log1p(-abar)))
    np.testing.assert_array_equal(schedule.sigmas, np.exp(-schedule.lambdas))
    assert schedule.lambda_at(3.0) == schedule.lambdas[3] and schedule.timestep_at(schedule.lambdas[7]) == 7.0


# ----------------------------------------------------------------------------- both users, one behaviour


def _both_paths(config: dict):
    """What ``--model diffusers:`` and ``DPMSolverScheduler.from_config`` make of one scheduler config."""
    pytest.importorskip("diffusers")
    from dpmcli.diffusers import DPMSolverScheduler
    from dpmcli.models.hf import schedule_options_from_scheduler_config

    results = []
    for read in (schedule_options_from_scheduler_config, lambda c: DPMSolverScheduler.from_config(c).solver_config):
        try:
            results.append(read(config))
        except ConfigError as error:
            results.append(error)
    return results


def test_two_sigma_flags_are_refused_by_both_paths_with_the_same_message():
    config = {"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True, "use_lu_lambdas": True}
    model, scheduler = _both_paths(config)
    assert isinstance(model, ConfigError) and isinstance(scheduler, ConfigError)
    problem = "sets use_karras_sigmas and use_lu_lambdas; use at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas"
    assert str(model).endswith(problem) and str(scheduler).endswith(problem)
    assert str(model).startswith("--model: the scheduler config (DPMSolverMultistepScheduler)")
    assert str(scheduler).startswith("DPMSolverScheduler:")


def test_sigmoid_is_read_alike_by_both_paths():
    config = {"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 200}
    model, scheduler = _both_paths(config)
    assert not isinstance(model, Exception) and not isinstance(scheduler, Exception), (model, scheduler)
    assert model["trained_betas"] == scheduler.trained_betas == sigmoid_betas(200, 0.0001, 0.02)


@pytest.mark.parametrize("spacing", DIFFUSERS_SPACINGS)
def test_both_paths_read_the_same_grid(spacing):
    words = {"_class_name": "DPMSolverMultistepScheduler", **scheduler_words({"spacing": spacing})}
    model, scheduler = _both_paths(words)
    assert model["spacing"] == scheduler.spacing == spacing


def test_a_flow_config_reads_as_the_flow_process_and_back():
    """use_flow_sigmas names the flow process; its betas and timestep spacing are unused there, as in diffusers."""
    config = {
        "use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction", "beta_schedule": "linear",
        "beta_start": 0.0001, "timestep_spacing": "trailing", "num_train_timesteps": 1000, "final_sigmas_type": "zero",
    }
    options = schedule_options(config, WHERE)
    assert options == {"process": "flow", "flow_shift": 3.0, "prediction_type": "flow_prediction", "train_steps": 1000, "final_sigma": "zero"}
    assert SolverConfig(**options).validated().process == "flow"
    words = scheduler_words(options)
    assert words["use_flow_sigmas"] is True and words["flow_shift"] == 3.0
    assert schedule_options(words, WHERE) == options
    dynamic = schedule_options({**config, "use_dynamic_shifting": True}, WHERE)
    assert "flow_shift" not in dynamic  # the shift arrives as mu
