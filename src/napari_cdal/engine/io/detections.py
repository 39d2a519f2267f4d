"""Nuclei as QuPath reads them: GeoJSON polygons with measurements, and a CSV table, ids as in the labels (no torch)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from napari_cdal.engine.labels import check_labels

NUCLEUS_CLASS = {"name": "Nucleus"}


def _rings(mask: np.ndarray, row0: int, col0: int) -> list[list[list[float]]]:
    """Closed outer rings [[x, y], ...] of the 4-connected parts of a padded crop, holes filled.

    Coordinates follow QuPath's convention: pixel (row r, column c) covers x in [c, c + 1] and
    y in [r, r + 1] of the full-resolution grid; `row0`/`col0` place the padded crop in the image.
    """
    from scipy import ndimage  # type: ignore[import-untyped]
    from skimage.measure import find_contours

    parts, n_parts = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, 1))
    rings = []
    for part in range(1, n_parts + 1):
        filled = ndimage.binary_fill_holes(parts == part)
        contours = find_contours(filled.astype(np.float32), 0.5)
        outer = max(contours, key=len)
        ring = (outer[:, ::-1] + (col0 + 0.5, row0 + 0.5)).tolist()
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        rings.append(ring)
    return rings


def labels_to_geojson(
    labels: np.ndarray,
    measurements: dict[str, np.ndarray] | None = None,
    object_type: str = "annotation",
    offset: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with one Polygon (MultiPolygon if split) per nonzero id.

    `object_type` is QuPath's: "detection" (light, for thousands of nuclei) or "annotation".
    `measurements` (columns with an "id" column, as nucleus_measurements gives) become each
    feature's `measurements` object, matched by id; NaN values are left out. `offset` (row, column)
    places a crop in the whole image (a slide's block).
    """
    from scipy import ndimage

    labels = check_labels(labels, "labels_to_geojson")
    if labels.ndim != 2:
        raise ValueError(
            f"GeoJSON polygons need a 2-D label image, got shape {labels.shape}; write one plane at a time"
        )
    ids = np.unique(labels)
    ids = ids[ids != 0]
    sequential = np.searchsorted(ids, labels) + 1
    sequential[labels == 0] = 0
    rows = {}
    if measurements is not None:
        names = [name for name in measurements if name != "id"]
        for index, ident in enumerate(np.asarray(measurements["id"])):
            rows[int(ident)] = {
                name: float(measurements[name][index])
                for name in names
                if math.isfinite(float(measurements[name][index]))
            }
    features = []
    for index, box in enumerate(ndimage.find_objects(sequential)):
        if box is None:
            continue
        padded = np.pad(sequential[box] == index + 1, 1)
        rings = _rings(padded, box[0].start - 1 + offset[0], box[1].start - 1 + offset[1])
        if len(rings) == 1:
            geometry = {"type": "Polygon", "coordinates": rings}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}
        ident = int(ids[index])
        properties: dict[str, Any] = {"objectType": object_type, "classification": dict(NUCLEUS_CLASS), "id": ident}
        if ident in rows:
            properties["measurements"] = rows[ident]
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def geojson_text(
    labels: np.ndarray,
    measurements: dict[str, np.ndarray] | None = None,
    object_type: str = "detection",
    offset: tuple[int, int] = (0, 0),
) -> str:
    """labels_to_geojson as the text of a file."""
    return json.dumps(labels_to_geojson(labels, measurements, object_type, offset))


def csv_text(columns: dict[str, np.ndarray]) -> str:
    """Columns of equal length as CSV text, one row per nucleus, NaN as an empty cell."""
    out = io.StringIO()
    _write_csv(out, [columns])
    return out.getvalue()


def _write_csv(out: TextIO, tables: Iterable[dict[str, np.ndarray]]) -> None:
    """Tables of the same columns as one CSV: the first table's header, then every table's rows in turn."""
    writer = csv.writer(out, lineterminator="\n")
    names = None
    for columns in tables:
        if names is None:
            names = list(columns)
            writer.writerow(names)
        for row in zip(*(np.asarray(columns[name]) for name in names), strict=True):
            writer.writerow([_cell(value) for value in row])
    if names is None:
        writer.writerow([])


def write_csv_tables(path: str | Path, tables: Iterable[dict[str, np.ndarray]]) -> Path:
    """csv_text of the tables joined, written atomically table by table: a slide's nuclei never all in memory."""
    from napari_cdal.engine.io.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as out:
            _write_csv(out, tables)

    atomic_write(path, write)
    return Path(path)


def write_feature_collection(path: str | Path, feature_lists: Iterable[list[dict[str, Any]]]) -> Path:
    """One GeoJSON FeatureCollection of the lists' features, written atomically list by list (the text json.dumps
    gives the whole collection), so that a slide's polygons are never all in memory."""
    from napari_cdal.engine.io.checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as out:
            out.write('{"type": "FeatureCollection", "features": [')
            first = True
            for features in feature_lists:
                for feature in features:
                    out.write(json.dumps(feature) if first else ", " + json.dumps(feature))
                    first = False
            out.write("]}")

    atomic_write(path, write)
    return Path(path)


def _cell(value: Any) -> Any:
    """One CSV cell: ids as integers, measurements to 4 decimals, NaN (not computed) empty."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return round(float(value), 4) if math.isfinite(value) else ""
    return value


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (never half-written)."""
    from napari_cdal.engine.io.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)
