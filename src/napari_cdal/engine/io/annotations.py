"""Aperio ImageScope XML annotations rasterised into instance labels (no torch)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from skimage.draw import polygon


def xml_to_instances(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise an Aperio XML (one Region per nucleus) into uint32 instance ids 1..N.

    Regions are filled in file order, so later ones win where they overlap; ids are then
    renumbered 1..N in file order, dropping regions left with no pixel.
    """
    path = Path(path)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"xml_to_instances: shape must be (height, width) >= 1, got {shape!r}")
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
            f"annotation file {path} has root element <{root.tag}>, expected <Annotations> "
            "(Aperio/ImageScope XML)"
        )
    labels = np.zeros(shape, dtype=np.uint32)
    n_regions = 0
    for region in root.iter("Region"):
        n_regions += 1
        rows, cols = [], []
        for vertex in region.iter("Vertex"):
            try:
                cols.append(float(vertex.attrib["X"]))
                rows.append(float(vertex.attrib["Y"]))
            except (KeyError, ValueError) as err:
                raise ValueError(
                    f"annotation file {path}: Region {region.get('Id', n_regions)!r} has a "
                    f"Vertex without numeric X and Y attributes ({vertex.attrib!r}); fix or "
                    "remove that vertex"
                ) from err
        if len(rows) < 3:
            continue
        rr, cc = polygon(np.asarray(rows), np.asarray(cols), shape)
        labels[rr, cc] = n_regions
    if n_regions == 0:
        return labels
    present = np.zeros(n_regions + 1, dtype=bool)
    present[labels.ravel()] = True
    present[0] = False
    lut = np.cumsum(present).astype(np.uint32)
    lut[0] = 0
    return lut[labels]
