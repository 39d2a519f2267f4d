"""The CUDA path: the same engine under autocast. Runs wherever a GPU exists, skipped elsewhere."""

import numpy as np
import pytest
import torch
from conftest import TINY, blob_tile

from napari_cdal.engine.config import TrainConfig
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import dice
from napari_cdal.engine.training.state import TrainState
from napari_cdal.engine.training.step import train_step

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_segment_on_cuda_matches_cpu(trained_tiny) -> None:
    model, _ = trained_tiny
    tile = blob_tile(31)
    on_cpu = run_to_end(segment_image(model, tile.image, image_mpp=0.5, seed=0))
    model.to("cuda")
    try:
        on_gpu = run_to_end(segment_image(model, tile.image, image_mpp=0.5, seed=0))
    finally:
        model.to("cpu")
    assert on_gpu.labels.shape == on_cpu.labels.shape
    assert dice(on_gpu.labels, on_cpu.labels) > 0.95
    assert dice(on_gpu.labels, tile.foreground) > 0.9


def test_train_step_on_cuda() -> None:
    device = torch.device("cuda")
    state = TrainState.create(CdalModel.initialise(TINY, 0).to(device), TrainConfig(iterations=5, batch_size=2))
    images = torch.randn(2, 3, 64, 64, device=device)
    x0 = torch.sign(torch.randn(2, 2, 64, 64, device=device))
    losses = train_step(state, images, x0, torch.ones(2, 1, 64, 64, device=device), device)
    assert all(np.isfinite(v) for v in losses.values())
