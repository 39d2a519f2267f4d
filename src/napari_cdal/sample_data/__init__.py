"""The MoNuSeg tile shipped with the package (CC BY-NC-SA 4.0; see LICENSE.md beside it).

It is one of the 7 validation tiles of `benchmarks/monuseg_split.json`: the bundled model was not
trained on it.
"""

from importlib import resources
from pathlib import Path

SAMPLE_NAME = "TCGA-B0-5698-01Z-00-DX1"
SAMPLE_MPP = 0.25
LICENCE_LINE = ("MoNuSeg 2018 tile TCGA-B0-5698 (kidney; Kumar et al. 2017), CC BY-NC-SA 4.0; "
                "a validation tile, not trained on")


def sample_tile_path() -> Path:
    """Path of the bundled sample tile."""
    return Path(str(resources.files(__name__) / f"{SAMPLE_NAME}.tif"))
