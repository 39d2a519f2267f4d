"""The samples shipped with the package: a MoNuSeg tile (CC BY-NC-SA 4.0) and an MSD hippocampus
MRI volume (CC BY-SA 4.0); see LICENSE.md beside them.

Each is a validation item of its split (`benchmarks/monuseg_split.json`,
`benchmarks/hippocampus_split.json`): the bundled models were not trained on them.
"""

from importlib import resources
from pathlib import Path

SAMPLE_NAME = "TCGA-B0-5698-01Z-00-DX1"
SAMPLE_MPP = 0.25
LICENCE_LINE = (
    "MoNuSeg 2018 tile TCGA-B0-5698 (kidney; Kumar et al. 2017), CC BY-NC-SA 4.0; a validation tile, not trained on"
)


def sample_tile_path() -> Path:
    """Path of the bundled sample tile."""
    return Path(str(resources.files(__name__) / f"{SAMPLE_NAME}.tif"))


VOLUME_SAMPLE_NAME = "hippocampus_276"
VOLUME_LICENCE_LINE = (
    "MSD Task04 hippocampus volume 276 (Simpson et al. 2019; Antonelli et al. 2022), "
    "CC BY-SA 4.0; a validation volume, not trained on"
)


def sample_volume_path() -> Path:
    """Path of the bundled hippocampus MRI volume (NIfTI)."""
    return Path(str(resources.files(__name__) / f"{VOLUME_SAMPLE_NAME}.nii.gz"))
