"""Stain normalisation before segmenting (Macenko, from torchstain): accuracy with and without, per tile.

    python benchmarks/stain.py [--model PATH] [--data DIR] [--split FILE] [--subset validation] [--json FILE]

torchstain is not a dependency of napari-cdal: `pip install torchstain` to run this. The normaliser
is fitted once on the split's training tiles (every fourth pixel of each, side by side), so that
each tile is mapped onto the stain the model was trained on. Each tile of --subset is then
segmented at the defaults as it is and normalised, with the same seed. Run it on a model trained
without an organ (benchmarks/organs.py) and that organ's tiles to see whether normalising helps on
tissue the model never saw.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from _common import SPLIT_FILE, default_data_dir, display_path, machine, table, write_json

from napari_cdal.engine.data.tiles import load_folder
from napari_cdal.engine.events import run_to_end
from napari_cdal.engine.method.model import load_model
from napari_cdal.engine.method.runtime import with_runtime
from napari_cdal.engine.segment.image import segment_image
from napari_cdal.engine.segment.metrics import score_segmentation

SUBSAMPLE = 4
"""Every how many pixels of each training tile the normaliser's reference keeps (it needs colours, not detail)."""


def fitted_normaliser(images: list[np.ndarray]) -> Any:
    """A Macenko normaliser fitted on the training tiles side by side."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    reference = np.concatenate([image[::SUBSAMPLE, ::SUBSAMPLE, :3] for image in images], axis=1)
    normaliser = NumpyMacenkoNormalizer()
    normaliser.fit(reference.astype(np.uint8))
    return normaliser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--split", default=str(SPLIT_FILE), help="JSON with 'train' and the --subset list")
    parser.add_argument("--subset", default="validation", help="which list of --split to score")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    split = json.loads(Path(args.split).read_text())
    data = Path(args.data)
    normaliser = fitted_normaliser([tile.image for tile in load_folder(data, split["train"])])
    model = with_runtime(load_model(args.model), "auto", "auto")
    rows = []
    for tile in load_folder(data, split[args.subset]):
        plain = tile.image[..., :3].astype(np.uint8)
        normalised, _, _ = normaliser.normalize(I=plain, stains=False)
        row: dict[str, Any] = {"tile": tile.name}
        for name, image in (("plain", plain), ("macenko", np.clip(normalised, 0, 255).astype(np.uint8))):
            result = run_to_end(segment_image(model, image, seed=0, keep_steps=False, with_attention=False))
            scores = score_segmentation(result.labels, tile.foreground, tile.instances)
            row.update({f"{key} {name}": scores[key] for key in ("dice", "aji", "pq")})
        rows.append(row)
        print(table([row], list(row)), flush=True)
    mean = {"tile": "mean", **{key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "tile"}}
    print(table([*rows, mean], list(mean)))
    write_json(
        args.json,
        {
            "command": "python benchmarks/stain.py",
            "model": display_path(args.model) if args.model else "bundled",
            "split": display_path(args.split),
            "subset": args.subset,
            "machine": machine(),
            "tiles": rows,
            "mean": mean,
        },
    )


if __name__ == "__main__":
    main()
