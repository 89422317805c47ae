"""The model contract's plumbing: image grids, a model's schedule under the user's options, model names."""

import numpy as np
import pytest
import torch

from dpmcli.config import SolverConfig
from dpmcli.errors import ConfigError
from dpmcli.experiment import apply_model_schedule
from dpmcli.images import image_grid, save_image_grid
from dpmcli.models import load_model


def test_image_grid_places_each_tile_where_it_belongs():
    images = torch.stack([torch.full((1, 2, 3), k / 5) for k in range(6)])  # six flat grey tiles
    picture = image_grid(images, columns=4, padding=1, scale=2)
    assert picture.shape == (2 * (4 + 1) + 1, 4 * (6 + 1) + 1)  # 2 rows of 4x6 tiles with 1-pixel gaps
    for k in range(6):
        r, c = divmod(k, 4)
        top, left = 1 + r * 5, 1 + c * 7
        tile = picture[top:top + 4, left:left + 6]
        assert np.all(tile == round(255 * k / 5))
    assert np.all(picture[0] == 128) and np.all(picture[:, 0] == 128)  # grey gaps
    assert np.all(picture[6:, 15:] == 128)  # the two missing tiles of the second row are left grey


def test_image_grid_colour_and_clamping():
    images = torch.tensor([[[[2.0]], [[-1.0]], [[0.5]]]])  # one RGB pixel, out of range on two channels
    picture = image_grid(images, padding=0, scale=1)
    assert picture.shape == (1, 1, 3)
    assert picture[0, 0].tolist() == [255, 0, 128]


def test_save_image_grid_writes_a_png(tmp_path):
    from PIL import Image

    path = tmp_path / "grid.png"
    save_image_grid(path, torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)), columns=5)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1]  # one row of five enlarged tiles
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


MODEL_SCHEDULE = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "train_steps": 1000,
                  "prediction_type": "v_prediction", "spacing": "trailing"}


def test_model_schedule_replaces_defaults():
    config, notes = apply_model_schedule(SolverConfig(), MODEL_SCHEDULE)
    assert (config.beta_schedule, config.beta_end, config.prediction_type, config.spacing) == ("linear", 0.02, "v_prediction", "trailing")
    assert notes == []


def test_typed_options_win_and_betas_travel_as_a_group():
    typed = SolverConfig(beta_schedule="squaredcos_cap_v2", spacing="karras")
    config, notes = apply_model_schedule(typed, MODEL_SCHEDULE, explicit=frozenset({"beta_schedule", "spacing"}))
    assert config.beta_schedule == "squaredcos_cap_v2" and config.spacing == "karras"
    assert config.beta_end == SolverConfig().beta_end  # the model's beta_end does not leak into the typed schedule
    assert config.prediction_type == "v_prediction"
    assert any("--beta-schedule" in n for n in notes) and any("--spacing karras" in n for n in notes)


def test_mixtures_refuse_conditioning():
    with pytest.raises(ConfigError, match="--guidance-scale"):
        load_model("ring", guidance_scale=2.0)
    with pytest.raises(ConfigError, match="--model"):
        load_model("diffusers:")
    with pytest.raises(ConfigError, match="--model"):
        load_model("nonsense")
