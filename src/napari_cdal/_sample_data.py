"""napari sample data: File > Open Sample > napari-cdal > the MoNuSeg H&E tile or the hippocampus MRI volume."""

from __future__ import annotations

from typing import Any


def make_monuseg_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """The bundled MoNuSeg tile as an RGB image layer at its physical scale (µm)."""
    from napari_cdal.engine.io.images import read_image
    from napari_cdal.sample_data import LICENCE_LINE, SAMPLE_MPP, SAMPLE_NAME, sample_tile_path

    image = read_image(sample_tile_path())
    meta = {
        "name": SAMPLE_NAME,
        "rgb": True,
        "scale": (SAMPLE_MPP, SAMPLE_MPP),
        "units": ("µm", "µm"),
        "metadata": {"licence": LICENCE_LINE, "mpp": SAMPLE_MPP},
    }
    return [(image, meta, "image")]


def make_hippocampus_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """The bundled hippocampus MRI volume as a 3-D image layer at its voxel spacing (mm), as the reader opens it."""
    from napari_cdal._reader import read_volume_file
    from napari_cdal.sample_data import VOLUME_LICENCE_LINE, sample_volume_path

    data, meta, kind = read_volume_file(sample_volume_path())
    meta["metadata"]["licence"] = VOLUME_LICENCE_LINE
    return [(data, meta, kind)]
