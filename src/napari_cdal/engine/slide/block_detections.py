"""Each block's nuclei as polygons and measurements, saved in the store beside its labels, checked on resume, and
gathered at the end into one GeoJSON and/or CSV, a block at a time."""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_cdal.engine.segment.windows import Box
from napari_cdal.engine.slide.store import StoreError, open_store_array, restart_fix

DETECTIONS_FOLDER = "detections"
"""Where in the store each block keeps its nuclei's polygons and measurements."""


def block_detections_path(store: Path, index: int) -> Path:
    """Where block `index` of the store keeps its detections."""
    return store / DETECTIONS_FOLDER / f"block_{index:06d}.json"


def save_block_detections(
    store: Path,
    index: int,
    written: np.ndarray,
    pixels: np.ndarray,
    region: Box,
    image_mpp: float,
    uncertainty: np.ndarray | None,
) -> None:
    """The polygons and measurements of the nuclei one block wrote, in slide coordinates, atomically."""
    from napari_cdal.engine.io.detections import labels_to_geojson, write_text
    from napari_cdal.engine.io.images import to_rgb_float
    from napari_cdal.engine.segment.measurements import nucleus_measurements

    table = nucleus_measurements(written, to_rgb_float(pixels, 3), image_mpp, uncertainty, (region[0], region[2]))
    features = labels_to_geojson(written, table, "detection", offset=(region[0], region[2]))["features"]
    rows = {
        name: [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(column).tolist()]
        for name, column in table.items()
    }
    path = block_detections_path(store, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"features": features, "rows": rows}))


def _done_detections(store: Path) -> Generator[dict[str, Any], None, None]:
    """Each done block's saved detections ('features', 'rows'), in block order, one block in memory at a time."""
    for index in open_store_array(store, store).attrs["done"]:
        path = block_detections_path(store, index)
        try:
            found = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(
                f"{store} is damaged: the detections of block {index}, {path.relative_to(store)}, cannot "
                f"be read ({type(exc).__name__}); {restart_fix(Path(store))}"
            ) from exc
        yield found


def _rows_table(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """A block's saved rows as the CSV's columns: ids as integers, measurements as floats (None is NaN)."""
    return {
        name: np.array([np.nan if v is None else v for v in values], dtype=np.int64 if name == "id" else np.float64)
        for name, values in rows.items()
    }


def write_slide_detections(store: str | Path, geojson: Path | None = None, table: Path | None = None) -> None:
    """Every done block's detections, in block order, into a GeoJSON FeatureCollection and/or a CSV table, written
    block by block: a slide of a million nuclei never holds them all."""
    from napari_cdal.engine.io.detections import write_csv_tables, write_feature_collection

    store = Path(store)
    if geojson is not None:
        write_feature_collection(geojson, (part["features"] for part in _done_detections(store)))
    if table is not None:
        write_csv_tables(table, (_rows_table(part["rows"]) for part in _done_detections(store)))


def check_detections(store: Path, done: list[int]) -> None:
    """Each done block's detections file is present and holds JSON (they are gathered at the end of the run)."""
    for index in done:
        path = block_detections_path(store, index)
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{store} is damaged: block {index} is done but its detections "
                f"{path.relative_to(store)} are {'missing' if not path.exists() else 'unreadable'} "
                f"({type(exc).__name__}); {restart_fix(store)}"
            ) from exc
