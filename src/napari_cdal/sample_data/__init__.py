"""The MoNuSeg tile shipped with the package (CC BY-NC-SA 4.0; see LICENSE.md beside it)."""

from importlib import resources
from pathlib import Path

SAMPLE_NAME = "TCGA-21-5784-01Z-00-DX1"
SAMPLE_MPP = 0.25
LICENCE_LINE = "MoNuSeg 2018 training tile TCGA-21-5784 (Kumar et al. 2017), CC BY-NC-SA 4.0"


def sample_tile_path() -> Path:
    """Path of the bundled sample tile."""
    return Path(str(resources.files(__name__) / f"{SAMPLE_NAME}.tif"))
