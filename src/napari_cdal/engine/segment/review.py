"""Review's queue: the places of one result a pathologist would most likely fix, on one score scale.

Three kinds of item: every predicted nucleus (`nucleus`), a predicted nucleus that looks like two
or more (`merge`: two or more blobs of the core channel inside it, or a large one of low
solidity), and a doubtful region no predicted nucleus covers (`miss`: sub-threshold foreground,
high uncertainty or a flagged error map, of a nucleus's size). Each kind's features go through its
own logistic model, fitted on the training tiles, into the chance that the item is an error, so
all three kinds rank on one scale; an error map, when given, is averaged in. Specks (under
`speck_um2`) have their score multiplied down: they are often wrong, but worth little to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_cdal.engine.labels import label_areas, label_sums
from napari_cdal.engine.segment.windows import as_box

REVIEW_BOX_COLUMNS = ("y0", "y1", "x0", "x1")
"""The review CSV's columns of an item's box: the corrected region `finetune --regions` reads from it."""

KINDS = ("nucleus", "miss", "merge")
"""The kinds of review item; ties of score go to the earlier kind."""

NUCLEUS_FEATURES = (
    "log_area",
    "log_area_sq",
    "uncertainty",
    "doubtful_share",
    "outline_uncertainty",
    "foreground",
    "solidity",
    "core_blobs",
    "core_max",
)
"""The features of a predicted nucleus (merges too), in the order of its weights after the intercept."""

MISS_FEATURES = ("log_area", "uncertainty", "foreground", "foreground_max")
"""The features of a candidate miss, in the order of its weights after the intercept."""

UNCERTAINTY_FEATURES = ("uncertainty", "doubtful_share", "outline_uncertainty")
"""The features one sample cannot give (no uncertainty): their weights are 0 in the weights without it."""


@dataclass(frozen=True)
class ReviewSettings:
    """Every level and weight of the review queue in one place.

    Chosen on the 19 MoNuSeg training tiles with instance truth (never on validation) with the
    bundled model at its defaults, by `benchmarks/review.py --subset train --fit`, which prints the
    figures behind each one. Areas are in µm² and distances in µm, so any µm/px is served; the
    weights are a logistic model's (intercept first, then the features in NUCLEUS_FEATURES or
    MISS_FEATURES order; log areas are natural logs of µm²). A model without uncertainty (one
    sample) uses the weights fitted without that feature.
    """

    speck_um2: float = 10.0
    """Items under this area are specks: quick to fix but worth little (on the training tiles 3461 of
    the 12147 predicted nuclei, 29 % of them wrong; on a validation breast tile 82 of 91 wrong), and
    ranked by mean uncertainty they took two thirds of Review's first 10 places."""
    speck_weight: float = 0.2
    """A speck's score is multiplied by this, so specks come after the non-specks worth a look (0.5 let
    specks take 2 % of the first 10 places on the training tiles, 0.2 none of the first 25)."""
    core_level: float = 0.7
    """A core blob is where the core channel reaches this inside a nucleus (the watershed's own
    markers are at 0.5, so two blobs at 0.5 are already split: a merge shows two only higher up).
    On the training tiles 50 % of the 169 nuclei with two blobs at 0.7 hold two true nuclei or more,
    against 6 % of all nuclei."""
    core_blob_um2: float = 1.0
    """Smallest core blob that counts."""
    merge_solidity: float = 0.9
    """A nucleus of lower solidity than this ..."""
    merge_min_um2: float = 60.0
    """... and larger than this is a merge candidate even with one core blob (40 % of these 45 nuclei
    on the training tiles are merges)."""
    doubtful_uncertainty: float = 0.5
    """Uncertainty from this level up is doubtful (the bundled model's chain entropy, 0..1; its 90th
    percentile over the training tiles is 0.47): a nucleus's doubtful share, a miss region. 0.6 and
    0.7 found fewer misses (reach 0.89, 0.86 against 0.90) and no higher precision."""
    outline_um: float = 0.5
    """A nucleus's outline uncertainty is the mean over this wide a ring just outside it."""
    miss_foreground: float = 0.2
    """Outside the predicted nuclei, foreground probability from this level up is doubtful too (0.1 and 0.3
    ranked the same within 0.01)."""
    miss_error: float = 0.5
    """So is an error map from this level up."""
    miss_gap_um: float = 0.5
    """Doubtful pixels this close to a predicted nucleus are its outline's, not a miss."""
    miss_open_um: float = 0.5
    """Radius of the opening that removes thin bands (outlines' halos) from the doubtful pixels. With
    this gap and opening (2 px each at 0.25 µm/px) the miss regions reached 75 of the 150 missed true
    nuclei no predicted nucleus's box holds, on the first 11 training tiles; a 1 µm gap or a 0.75 µm
    opening reached 71."""
    miss_min_um2: float = 8.0
    """Smallest doubtful region that may be a missed nucleus (about half the median true nucleus, 15 µm²)."""
    miss_max_um2: float = 250.0
    """Largest doubtful region that may be a missed nucleus (the largest true one on the training tiles:
    227 µm²)."""
    error_map_weight: float = 0.25
    """With an error map, an item's score is (1 - w) x the model's chance + w x the map's mean inside
    it. With the bundled model's pixel D, on the 19 training tiles (`benchmarks/review.py --subset train
    --fit`), errors in the first 10 / 25: w = 0 0.653 / 0.602, 0.25 0.658 / 0.600, 0.5 0.653 / 0.579,
    0.75 0.595 / 0.547, 1 0.495 / 0.446."""
    nucleus_weights: tuple[float, ...] = (12.136, -2.944, 0.423, 13.392, -5.962, 1.371, 6.554, -12.859, 1.277, -7.508)
    """A predicted nucleus's chance of being wrong or a merge (fitted on 8686 non-speck nuclei, 1477 errors)."""
    nucleus_weights_no_uncertainty: tuple[float, ...] = (
        34.228,
        -1.888,
        0.349,
        0.0,
        0.0,
        0.0,
        -14.763,
        -13.593,
        1.299,
        -8.615,
    )
    miss_weights: tuple[float, ...] = (-3.489, 0.135, 3.539, -2.292, 0.83)
    """A candidate miss's chance of covering a missed true nucleus (fitted on 380 non-speck regions, 151 hits;
    the candidates include those the pixel D's error map adds)."""
    miss_weights_no_uncertainty: tuple[float, ...] = (-1.363, 0.231, 0.0, -0.707, 0.953)


REVIEW_SETTINGS = ReviewSettings()
"""The settings Review, `segment --review` and the benchmark use."""


@dataclass(frozen=True)
class ReviewItem:
    """One place to look at: its rank (1 first), kind, nucleus id (0 for a miss), centre, area and score.

    y and x are the centroid in the input's pixels; `box` (y0, y1, x0, x1) holds the nucleus or region.
    """

    rank: int
    kind: str
    id: int
    y: float
    x: float
    area_um2: float
    score: float
    box: tuple[int, int, int, int] = field(default=(0, 0, 0, 0), compare=False)


@dataclass
class Candidates:
    """Every candidate item of one result, unranked: one row per item, with its features."""

    kind: np.ndarray
    id: np.ndarray
    y: np.ndarray
    x: np.ndarray
    area_um2: np.ndarray
    box: np.ndarray
    features: dict[str, np.ndarray]
    error: np.ndarray | None
    """Mean of the error map inside each item; None without an error map."""
    regions: np.ndarray
    """The miss regions' labels (1..M in the order of the miss rows), for whoever checks them."""

    def __len__(self) -> int:
        """How many candidates there are."""
        return len(self.kind)


def _boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """(y0, y1, x0, x1) of ids 1..n (zeros for an id with no pixel)."""
    out = np.zeros((n, 4), np.int64)
    for index, found in enumerate(ndi.find_objects(labels, max_label=n)):
        if found is not None:
            out[index] = (found[0].start, found[0].stop, found[1].start, found[1].stop)
    return out


def _means(labels: np.ndarray, n: int, values: np.ndarray | None, area: np.ndarray) -> np.ndarray:
    """The mean of `values` over each id 1..n of `labels` (NaN for all when there are no values)."""
    if values is None:
        return np.full(n, np.nan)
    return label_sums(labels, values, n)[1 : n + 1] / np.maximum(area, 1)


def _maxima(labels: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    """The largest of `values` inside each id 1..n of `labels` (0 for an id with no pixel)."""
    inside = labels > 0
    out = np.zeros(n + 1)
    np.maximum.at(out, labels[inside], np.asarray(values, np.float64)[inside])
    return out[1:]


def _solidity(labels: np.ndarray, n: int) -> np.ndarray:
    """Area over convex-hull area of each id 1..n (skimage's regionprops)."""
    from skimage.measure import regionprops_table

    table = regionprops_table(labels, properties=("label", "solidity"))
    out = np.ones(n)
    out[table["label"] - 1] = table["solidity"]
    return out


def _core_blobs(labels: np.ndarray, n: int, core: np.ndarray | None, level: float, least_px: int) -> np.ndarray:
    """How many separate blobs of `core` >= level (of at least `least_px` pixels) each nucleus holds."""
    if core is None:
        return np.zeros(n)
    blobs, count = ndi.label((np.asarray(core) >= level) & (labels > 0))
    inside = blobs > 0
    pairs, sizes = np.unique(labels[inside].astype(np.int64) * (count + 1) + blobs[inside], return_counts=True)
    return np.bincount(pairs[sizes >= least_px] // (count + 1), minlength=n + 1)[1 : n + 1].astype(np.float64)


def _disk(radius: float) -> np.ndarray:
    """A disk-shaped footprint of `radius` pixels (rounded)."""
    r = max(0, int(round(radius)))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _miss_regions(
    labels: np.ndarray,
    foreground: np.ndarray,
    uncertainty: np.ndarray | None,
    error_map: np.ndarray | None,
    image_mpp: float,
    settings: ReviewSettings,
) -> np.ndarray:
    """Doubtful regions outside the predicted nuclei, of a nucleus's size: labels 1..M."""
    doubtful = foreground >= settings.miss_foreground
    if uncertainty is not None:
        doubtful |= uncertainty >= settings.doubtful_uncertainty
    if error_map is not None:
        doubtful |= error_map >= settings.miss_error
    gap = _disk(settings.miss_gap_um / image_mpp)
    doubtful &= ~ndi.binary_dilation(labels > 0, gap)
    radius = settings.miss_open_um / image_mpp
    if radius >= 1:
        doubtful = ndi.binary_opening(doubtful, _disk(radius))
    regions, count = ndi.label(doubtful)
    area = label_areas(regions, count)[1:] * image_mpp * image_mpp
    keep = (area >= settings.miss_min_um2) & (area <= settings.miss_max_um2)
    renumber = np.zeros(count + 1, np.int64)
    renumber[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[regions]


def review_candidates(
    labels: np.ndarray,
    probability: np.ndarray,
    uncertainty: np.ndarray | None,
    image_mpp: float,
    error_map: np.ndarray | None = None,
    settings: ReviewSettings = REVIEW_SETTINGS,
) -> Candidates:
    """Every predicted nucleus (a merge where it looks like two) and every candidate miss, with features.

    `probability` is (C, H, W): channel 0 foreground, channel 1 nucleus core when present;
    `uncertainty` and `error_map` (in [0, 1], the belief that a pixel is wrong) are H x W or None.
    """
    labels = np.asarray(labels).astype(np.int64)
    probability = np.asarray(probability, np.float32)
    if labels.ndim != 2 or probability.ndim != 3 or probability.shape[1:] != labels.shape:
        raise ValueError(f"labels {labels.shape} and probability {probability.shape} must be H x W and C x H x W")
    for name, values in (("uncertainty", uncertainty), ("error_map", error_map)):
        if values is not None and np.shape(values) != labels.shape:
            raise ValueError(f"{name} {np.shape(values)} must be H x W like the labels {labels.shape}")
    foreground = probability[0]
    core = probability[1] if probability.shape[0] > 1 else None
    pixel_um2 = image_mpp * image_mpp
    n = int(labels.max(initial=0))
    area_px = label_areas(labels, n)[1 : n + 1].astype(np.float64)
    present = area_px > 0
    ids = np.arange(1, n + 1)[present]
    blobs = _core_blobs(labels, n, core, settings.core_level, max(1, round(settings.core_blob_um2 / pixel_um2)))
    solidity = _solidity(labels, n) if n else np.zeros(0)
    area_um2 = area_px * pixel_um2
    merge = (blobs >= 2) | ((solidity < settings.merge_solidity) & (area_um2 > settings.merge_min_um2))
    with np.errstate(invalid="ignore", divide="ignore"):
        centres = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(-1, 2)
    regions = _miss_regions(labels, foreground, uncertainty, error_map, image_mpp, settings)
    m = int(regions.max(initial=0))
    region_px = label_areas(regions, m)[1:].astype(np.float64)
    region_centres = np.array(ndi.center_of_mass(np.ones(labels.shape), regions, np.arange(1, m + 1))).reshape(-1, 2)
    region_fg_max = _maxima(regions, m, foreground)

    def both(nuclei: np.ndarray, misses: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(nuclei, np.float64)[present], np.asarray(misses, np.float64)])

    log_area = np.log(np.maximum(both(area_um2, region_px * pixel_um2), 1e-3))
    doubtful = None if uncertainty is None else np.asarray(uncertainty) >= settings.doubtful_uncertainty
    ring = ndi.grey_dilation(labels, footprint=_disk(max(1.0, settings.outline_um / image_mpp))) * (labels == 0)
    ring_px = label_areas(ring, n)[1 : n + 1].astype(np.float64)
    core_max = _maxima(labels, n, core) if core is not None else np.zeros(n)
    features = {
        "log_area": log_area,
        "log_area_sq": log_area**2,
        "uncertainty": both(_means(labels, n, uncertainty, area_px), _means(regions, m, uncertainty, region_px)),
        "doubtful_share": both(_means(labels, n, doubtful, area_px), _means(regions, m, doubtful, region_px)),
        "outline_uncertainty": both(_means(ring, n, uncertainty, ring_px), np.zeros(m)),
        "foreground": both(_means(labels, n, foreground, area_px), _means(regions, m, foreground, region_px)),
        "foreground_max": both(np.zeros(n), region_fg_max),
        "solidity": both(solidity, np.ones(m)),
        "core_blobs": both(blobs, np.zeros(m)),
        "core_max": both(core_max, np.zeros(m)),
    }
    error = (
        None
        if error_map is None
        else both(_means(labels, n, error_map, area_px), _means(regions, m, error_map, region_px))
    )
    kind = np.array(["merge" if flag else "nucleus" for flag in merge[present]] + ["miss"] * m, dtype=object)
    return Candidates(
        kind=kind,
        id=np.concatenate([ids, np.zeros(m, np.int64)]).astype(np.int64),
        y=np.concatenate([centres[:, 0], region_centres[:, 0]]),
        x=np.concatenate([centres[:, 1], region_centres[:, 1]]),
        area_um2=both(area_um2, region_px * pixel_um2),
        box=np.concatenate([_boxes(labels, n)[present], _boxes(regions, m)]).reshape(-1, 4),
        features=features,
        error=error,
        regions=regions,
    )


def _logistic(weights: tuple[float, ...], columns: list[np.ndarray]) -> np.ndarray:
    """The logistic model's chance for each row (intercept first; a missing feature counts 0)."""
    z = np.full(len(columns[0]) if columns else 0, float(weights[0]))
    for weight, column in zip(weights[1:], columns, strict=True):
        z = z + weight * np.nan_to_num(column)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def score_candidates(candidates: Candidates, settings: ReviewSettings = REVIEW_SETTINGS) -> np.ndarray:
    """Each candidate's chance of being an error (specks multiplied down), on one scale for all kinds."""
    has_uncertainty = not np.all(np.isnan(candidates.features["uncertainty"])) or len(candidates) == 0
    score = np.zeros(len(candidates))
    is_miss = candidates.kind == "miss"
    for rows, names, weights, without in (
        (~is_miss, NUCLEUS_FEATURES, settings.nucleus_weights, settings.nucleus_weights_no_uncertainty),
        (is_miss, MISS_FEATURES, settings.miss_weights, settings.miss_weights_no_uncertainty),
    ):
        if rows.any():
            chosen = weights if has_uncertainty else without
            score[rows] = _logistic(chosen, [candidates.features[name][rows] for name in names])
    if candidates.error is not None:
        score = (1.0 - settings.error_map_weight) * score + settings.error_map_weight * candidates.error
    return np.where(candidates.area_um2 < settings.speck_um2, settings.speck_weight * score, score)


def rank_candidates(
    candidates: Candidates, scores: np.ndarray, settings: ReviewSettings = REVIEW_SETTINGS
) -> np.ndarray:
    """Row order of the queue: higher score first; at equal score non-specks, then by kind, then id, then place."""
    speck = candidates.area_um2 < settings.speck_um2
    kind_order = np.array([KINDS.index(kind) for kind in candidates.kind], np.int64)
    return np.lexsort((candidates.x, candidates.y, candidates.id, kind_order, speck, -np.asarray(scores)))


def review_items(
    labels: np.ndarray,
    probability: np.ndarray,
    uncertainty: np.ndarray | None,
    image_mpp: float,
    error_map: np.ndarray | None = None,
    settings: ReviewSettings = REVIEW_SETTINGS,
    count: int | None = None,
) -> list[ReviewItem]:
    """The review queue of one result, best first (the first `count`, all when None)."""
    candidates = review_candidates(labels, probability, uncertainty, image_mpp, error_map, settings)
    scores = score_candidates(candidates, settings)
    order = rank_candidates(candidates, scores, settings)[:count]
    return [
        ReviewItem(
            rank + 1,
            str(candidates.kind[row]),
            int(candidates.id[row]),
            float(candidates.y[row]),
            float(candidates.x[row]),
            float(candidates.area_um2[row]),
            float(scores[row]),
            as_box(candidates.box[row]),
        )
        for rank, row in enumerate(order)
    ]


def review_table(items: list[ReviewItem]) -> dict[str, np.ndarray]:
    """The items as the columns of `segment --review`'s CSV: rank, kind, id, y, x, area_um2, score, and the box
    (y0, y1, x0, x1, half-open pixels) that `finetune --regions` learns from once the items are corrected."""
    boxes = np.array([item.box for item in items], np.int64).reshape(-1, 4)
    return {
        "rank": np.array([item.rank for item in items], np.int64),
        "kind": np.array([item.kind for item in items], dtype=object),
        "id": np.array([item.id for item in items], np.int64),
        "y": np.array([item.y for item in items], np.float64),
        "x": np.array([item.x for item in items], np.float64),
        "area_um2": np.array([item.area_um2 for item in items], np.float64),
        "score": np.array([item.score for item in items], np.float64),
        **{name: boxes[:, column] for column, name in enumerate(REVIEW_BOX_COLUMNS)},
    }
