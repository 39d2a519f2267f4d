"""Nucleus annotations as polygons: Aperio ImageScope XML and GeoJSON, rasterised into instance labels (no torch)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon

from napari_cdal.engine.labels import relabel_sequential


@dataclass
class Annotation:
    """The polygons of one file: per nucleus its id (or None) and its rings of (x, y) pixel points.

    The first ring of a polygon is its outline and later rings are holes. `pixel_centres` says
    whether a point (x, y) is the centre of pixel (y, x) (Aperio XML) or its top-left corner
    (GeoJSON, QuPath's convention, where pixel (r, c) covers [c, c + 1] x [r, r + 1]).
    """

    nuclei: list[tuple[int | None, list[list[np.ndarray]]]]
    pixel_centres: bool
    microns_per_pixel: float | None = None

    def extent(self) -> tuple[int, int] | None:
        """(height, width) just holding every point, or None without points."""
        points = [ring for _, polygons in self.nuclei for rings in polygons for ring in rings if len(ring)]
        if not points:
            return None
        top = np.max(np.concatenate(points), axis=0)
        return max(1, math.ceil(top[1]) + 1), max(1, math.ceil(top[0]) + 1)


def read_xml(path: str | Path) -> Annotation:
    """The Regions of an Aperio XML (one per nucleus), in file order, with the file's MicronsPerPixel."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(
            f"annotation file {path} is not valid XML ({err}); re-export it from ImageScope "
            "or delete it so the instance mask or binary mask is used instead"
        ) from err
    if root.tag != "Annotations":
        raise ValueError(
            f"annotation file {path} has root element <{root.tag}>, expected <Annotations> (Aperio/ImageScope XML)"
        )
    nuclei: list[tuple[int | None, list[list[np.ndarray]]]] = []
    for index, region in enumerate(root.iter("Region"), start=1):
        points = []
        for vertex in region.iter("Vertex"):
            try:
                points.append((float(vertex.attrib["X"]), float(vertex.attrib["Y"])))
            except (KeyError, ValueError) as err:
                raise ValueError(
                    f"annotation file {path}: Region {region.get('Id', index)!r} has a Vertex without numeric "
                    f"X and Y attributes ({vertex.attrib!r}); fix or remove that vertex"
                ) from err
        nuclei.append((None, [[np.asarray(points, dtype=np.float64).reshape(-1, 2)]]))
    mpp = root.attrib.get("MicronsPerPixel")
    return Annotation(nuclei, pixel_centres=True, microns_per_pixel=float(mpp) if mpp else None)


def read_geojson(path: str | Path) -> Annotation:
    """Every Polygon and MultiPolygon feature of a GeoJSON file, with its integer `properties.id` if any."""
    path = Path(path)
    document: dict[str, Any] = json.loads(path.read_text())
    if document.get("type") == "FeatureCollection":
        features = document.get("features", [])
    elif document.get("type") == "Feature":
        features = [document]
    else:
        raise ValueError(f"{path} is not a GeoJSON Feature or FeatureCollection")
    nuclei = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        ident = (feature.get("properties") or {}).get("id")
        ident = ident if isinstance(ident, int) and ident > 0 else None
        if geometry.get("type") == "Polygon":
            polygons = [geometry["coordinates"]]
        elif geometry.get("type") == "MultiPolygon":
            polygons = geometry["coordinates"]
        else:
            continue
        rings = [[np.asarray(ring, dtype=np.float64).reshape(-1, 2) for ring in rings] for rings in polygons]
        nuclei.append((ident, rings))
    return Annotation(nuclei, pixel_centres=False)


def read_annotation(path: str | Path) -> Annotation:
    """An annotation file by its suffix: .xml (Aperio) or .geojson / .json (GeoJSON)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".xml":
        return read_xml(path)
    if suffix in (".geojson", ".json"):
        return read_geojson(path)
    raise ValueError(f"{path} is not an annotation file this tool reads; give an Aperio .xml or a .geojson")


def rasterise(annotation: Annotation, shape: tuple[int, int]) -> np.ndarray:
    """Fill the polygons into uint32 instance ids on a (height, width) grid.

    Nuclei are filled in order, so later ones win where they overlap; holes are cleared. Nuclei
    with their own ids keep them; the others are numbered after the largest given id, in order,
    and when no nucleus had an id the result is renumbered 1..N without the ones left empty.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"rasterise: shape must be (height, width) >= 1, got {shape!r}")
    labels = np.zeros(shape, dtype=np.uint32)
    given = [ident for ident, _ in annotation.nuclei if ident is not None]
    next_id = max(given, default=0) + 1
    offset = 0.0 if annotation.pixel_centres else 0.5
    for ident, polygons in annotation.nuclei:
        if ident is None:
            ident, next_id = next_id, next_id + 1
        for rings in polygons:
            for ring_index, ring in enumerate(rings):
                if len(ring) < 3:
                    continue
                rr, cc = polygon(ring[:, 1] - offset, ring[:, 0] - offset, shape)
                if ring_index == 0:
                    labels[rr, cc] = ident
                else:
                    hole = labels[rr, cc] == ident
                    labels[rr[hole], cc[hole]] = 0
    if given or not annotation.nuclei:
        return labels
    return relabel_sequential(labels)[0].astype(np.uint32)


def xml_to_instances(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise an Aperio XML (one Region per nucleus) into uint32 instance ids 1..N in file order."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"xml_to_instances: shape must be (height, width) >= 1, got {shape!r}")
    return rasterise(read_xml(path), shape)
