"""Final samples of image models as one grid picture (PNG), written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import report  # report.atomic_path is looked up per call (tests stand in a full disk)

GAP = 0.5
MIN_TILE = 48  # pixels: tiny images (8x8 digits) are enlarged, by whole factors, to at least this


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 1, scale: int | None = None) -> np.ndarray:
    """(batch, channels, H, W) in [0, 1] -> one uint8 picture (rows, cols[, 3]) with a grey gap between tiles.

    One channel stays grey; three are RGB; other counts show the first three (or the first one).
    """
    array = images.detach().float().cpu().clamp(0, 1).numpy()
    if array.ndim != 4:
        raise ValueError(f"images must be (batch, channels, height, width), not {tuple(array.shape)}")
    batch, channels, height, width = array.shape
    array = array[:, :3] if channels >= 3 else array[:, :1]
    columns = max(1, min(batch, columns or math.ceil(math.sqrt(batch))))
    rows = math.ceil(batch / columns)
    scale = scale or max(1, math.ceil(MIN_TILE / max(height, width)))
    tile_h, tile_w = height * scale, width * scale
    # mid-grey gaps: visible between dark-background tiles (digits) and light ones alike
    grid = np.full((array.shape[1], rows * (tile_h + padding) + padding, columns * (tile_w + padding) + padding), GAP)
    for index in range(batch):
        r, c = divmod(index, columns)
        tile = array[index].repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour: pixels stay visible
        top, left = padding + r * (tile_h + padding), padding + c * (tile_w + padding)
        grid[:, top:top + tile_h, left:left + tile_w] = tile
    picture = np.round(grid * 255).astype(np.uint8)
    return picture[0] if picture.shape[0] == 1 else picture.transpose(1, 2, 0)


def save_image_grid(path: str | Path, images: torch.Tensor, columns: int | None = None) -> None:
    from PIL import Image

    picture = image_grid(images, columns)
    with report.atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
