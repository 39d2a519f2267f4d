"""Former name of `napari_cdal.catalog` (where models live), kept so that scripts importing it go on working.

`napari_cdal.models` is the very module `napari_cdal.catalog`, not a copy: whatever is set on one (a test's
stand-in for the bundled model) is seen through the other.
"""

from __future__ import annotations

import sys

from napari_cdal import catalog
from napari_cdal.catalog import (  # noqa: F401  (the former public names, for type checkers)
    BUNDLED_LABEL,
    CACHE_DIR_ENV,
    MODEL_DIR_ENV,
    MODEL_SUFFIX,
    TRAINING_STATE_SUFFIX,
    ModelEntry,
    bundled_model_file,
    bundled_models,
    cache_dir,
    list_models,
    model_dir,
    model_dir_problem,
    state_path,
)

sys.modules[__name__] = catalog
