"""Draw the bundled model's nucleus outlines (green) and the ground truth's (yellow) on a validation tile.

    python docs/overlay.py [--tile TCGA-E2-A1B5-01Z-00-DX1] [--model PATH] [--out docs/images/validation_overlay.png]

Used by docs/model_card.md to show where the model fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import default_data_dir  # noqa: E402

from napari_cdal.engine.data.tiles import load_tile  # noqa: E402
from napari_cdal.engine.events import run_to_end  # noqa: E402
from napari_cdal.engine.method.model import load_model  # noqa: E402
from napari_cdal.engine.segment.image import segment_image  # noqa: E402
from napari_cdal.engine.segment.metrics import score_segmentation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", default="TCGA-E2-A1B5-01Z-00-DX1")
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--crop", type=int, nargs=4, default=[250, 750, 250, 750], metavar=("Y0", "Y1", "X0", "X1"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "validation_overlay.png"))
    args = parser.parse_args()

    tile = load_tile(args.data, args.tile)
    result = run_to_end(segment_image(load_model(args.model), tile.image, keep_steps=False, with_attention=False))
    print(args.tile, score_segmentation(result.labels, tile.foreground, tile.instances))
    y0, y1, x0, x1 = args.crop
    canvas = tile.image[y0:y1, x0:x1].copy()
    canvas[find_boundaries(tile.instances[y0:y1, x0:x1], mode="inner")] = (255, 230, 0)
    canvas[find_boundaries(result.labels[y0:y1, x0:x1], mode="inner")] = (0, 255, 80)
    image = Image.fromarray(np.asarray(canvas)).resize(((x1 - x0) * 2, (y1 - y0) * 2), Image.NEAREST)
    image.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
