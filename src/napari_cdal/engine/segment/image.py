"""Whole-image segmentation: resample to the model's µm/px, cut into windows, sample, blend, split nuclei, resample."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_cdal.engine.defaults import (
    AUGMENT_SAMPLES,
    CORE_THRESHOLD,
    DEFAULT_IMAGE_MPP,
    DEFAULT_THRESHOLD,
    MARKER_SPACING_UM,
    MAX_HOLE_AREA_UM2,
    MIN_CORE_AREA_UM2,
    MIN_NUCLEUS_AREA_UM2,
    SMALL_NUCLEUS_FLOOR,
    SMALL_NUCLEUS_UM2,
)
from napari_cdal.engine.device import make_rng
from napari_cdal.engine.events import TICK, Progress
from napari_cdal.engine.io.images import to_rgb_float
from napari_cdal.engine.method.intensity import normalise, stretch_intensity
from napari_cdal.engine.method.model import CdalModel
from napari_cdal.engine.method.resampling import model_grid, resample
from napari_cdal.engine.method.sampler import SampleOutput, StepOutput, reverse_process, unit_foreground
from napari_cdal.engine.segment.instances import drop_unsure_small, instances_from_probability
from napari_cdal.engine.segment.stain import keep_stained
from napari_cdal.engine.segment.windows import WINDOW_PX, WindowBlender, window_boxes

WINDOW_OVERLAP_PX = 32
"""Least overlap of neighbouring windows, in model pixels (16 µm), blended over its width. On the validation tiles
cut into 256-px windows, so that a seam crosses each (benchmarks/slide_blocks.py --overlaps 64 32 16), overlaps of
64, 32 and 16 px scored Dice 0.808 / 0.811 / 0.812 and AJI 0.597 / 0.599 / 0.600 against 0.809 / 0.599 uncut:
32 costs nothing at the seams and half the doubled pixels of 64."""


@dataclass
class StepUpdate:
    """A live view of one reverse step on one window of the image, on the input image's pixel grid.

    `foreground` is the step's x̂0, `chain` the x_s it drew and `chain_start` the noise x_T it began
    from (the first step only), each the foreground on [0, 1], as the result's stacks hold them.
    The maps are None when the run keeps no step maps (keep_steps=False): nobody shows them then.
    """

    window: int
    n_windows: int
    step: int
    n_steps: int
    box: tuple[int, int, int, int]
    foreground: np.ndarray | None
    attention: np.ndarray | None
    chain: np.ndarray | None = None
    chain_start: np.ndarray | None = None


@dataclass
class SegmentationResult:
    """Instance labels on the input grid plus the maps a user can inspect.

    With step maps kept, `steps` (S, H, W) holds x̂0 after each of the S reverse steps and `chain`
    (S + 1, H, W) the chain as sampled, x_T (the drawn noise) then each x_s down to x_0; both are
    the foreground channel averaged over the K samples and mapped from the label scale [-1, 1]
    to [0, 1]. `attention` (S, H, W) is D's map at each step; `final_attention_maps` holds the last
    step's maps by kind (the model's own attention display whenever attention was computed).
    """

    labels: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray | None
    steps: np.ndarray | None
    attention: np.ndarray | None
    seconds: float
    uncertainty_maps: dict[str, np.ndarray] = field(default_factory=dict)
    final_attention_maps: dict[str, np.ndarray] = field(default_factory=dict)
    chain: np.ndarray | None = None

    @property
    def error_map(self) -> np.ndarray | None:
        """The pixel D's belief that each pixel of the mask is wrong, at the last step (None without it)."""
        return self.final_attention_maps.get("error_probability")

    @property
    def n_nuclei(self) -> int:
        """How many nuclei the labels hold (ids run 1..N)."""
        return int(self.labels.max())

    def mean_area_px(self) -> float:
        """Mean nucleus area in input pixels (0 when none was found)."""
        if self.n_nuclei == 0:
            return 0.0
        return float(np.count_nonzero(self.labels)) / self.n_nuclei


def _to_image_grid(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) model-grid maps -> (C, H, W) float32 numpy on the image grid (bilinear)."""
    out = resample(values[None].float(), size, mode="bilinear")[0]
    return out.cpu().numpy().astype(np.float32)


def _box_on_image(
    box: tuple[int, int, int, int], scale_y: float, scale_x: float, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = box
    return (
        round(y0 * scale_y),
        min(size[0], round(y1 * scale_y)),
        round(x0 * scale_x),
        min(size[1], round(x1 * scale_x)),
    )


def probability_to_labels(
    probability: np.ndarray,
    image_mpp: float,
    threshold: float = DEFAULT_THRESHOLD,
    min_nucleus_um2: float = MIN_NUCLEUS_AREA_UM2,
    min_core_um2: float = MIN_CORE_AREA_UM2,
    core_threshold: float = CORE_THRESHOLD,
    small_nucleus_um2: float = SMALL_NUCLEUS_UM2,
    small_nucleus_floor: float = SMALL_NUCLEUS_FLOOR,
) -> np.ndarray:
    """Instance ids from (C, H, W) probability maps, with size limits given in µm and scaled to pixels."""
    area_px = 1.0 / (image_mpp * image_mpp)
    core = probability[1] if probability.shape[0] > 1 else None
    centre = probability[2] if probability.shape[0] > 2 else core  # a predicted distance to the border, else the core
    labels = instances_from_probability(
        probability[0],
        core,
        centre=centre,
        threshold=threshold,
        min_area=max(1, round(min_nucleus_um2 * area_px)),
        min_distance=max(1, round(MARKER_SPACING_UM / image_mpp)),
        max_hole_area=max(1, round(MAX_HOLE_AREA_UM2 * area_px)),
        min_core_area=round(min_core_um2 * area_px),
        core_threshold=core_threshold,
    )
    return drop_unsure_small(labels, probability[0], round(small_nucleus_um2 * area_px), small_nucleus_floor)


def segment_image(
    model: CdalModel,
    image: np.ndarray,
    image_mpp: float = DEFAULT_IMAGE_MPP,
    sampling_steps: int | None = None,
    samples: int | None = None,
    seed: int | None = 0,
    threshold: float = DEFAULT_THRESHOLD,
    window_px: int = WINDOW_PX,
    overlap: int = WINDOW_OVERLAP_PX,
    keep_steps: bool = True,
    with_attention: bool = True,
    attention_kinds: tuple[str, ...] = (),
    uncertainty_kinds: tuple[str, ...] = (),
    augment: bool = AUGMENT_SAMPLES,
) -> Generator[Progress, None, None]:
    """Segment one image; yields Progress('step', i, n, StepUpdate) per window and step, then 'done'.

    Between them come the sampler's ticks, Progress('tick', steps done, n), places to stop and no more.

    The image goes onto the model's grid (its µm/px, or its longer side at `model_side`), a
    grayscale model's image stretched first by its own percentiles (`stretch_intensity`).

    The final event's payload is a SegmentationResult on the input's pixel grid; its uncertainty
    is None with one sample (no spread to measure). `keep_steps` keeps x̂0 per step (`steps`) and
    the chain x_T..x_0 (`chain`), blended across windows as the probability is. `attention_kinds`
    adds D's maps of the last step by kind, `uncertainty_kinds` other uncertainty measures
    (UNCERTAINTY_MEASURES) than the model's (for benchmarks); only what is asked for is blended and
    resampled. `augment` gives each of the K samples its own view of a window (defaults.AUGMENT_SAMPLES).
    Windows are at most `window_px` on a side. Closing the generator between
    events cancels the run and leaves nothing behind.
    """
    start = time.perf_counter()
    config = model.config
    rgb = to_rgb_float(image, config.image_channels)
    height, width = rgb.shape[:2]
    device = next(model.generator.parameters()).device
    mh, mw = model_grid(height, width, image_mpp, config)
    stretched = stretch_intensity(rgb, config)  # grayscale: by the image's own percentiles, as in training
    pixels = torch.from_numpy(np.ascontiguousarray(stretched.transpose(2, 0, 1)))[None]
    on_model_grid = normalise(resample(pixels, (mh, mw)), config)
    n_steps = config.sampling_steps if sampling_steps is None else sampling_steps
    samples = config.default_samples if samples is None else samples
    boxes = window_boxes(mh, mw, window_px, overlap, config.size_multiple)
    total = len(boxes) * n_steps
    rng = make_rng(seed)
    wanted = (config.uncertainty_measure, *uncertainty_kinds)
    measures_kept = tuple(dict.fromkeys(wanted)) if samples > 1 else ()
    final_kinds = tuple(dict.fromkeys(((config.attention_display,) if with_attention else ()) + tuple(attention_kinds)))
    planes_kept = config.label_channels + len(measures_kept) + len(final_kinds)
    blend_prob = WindowBlender(planes_kept, mh, mw, overlap)
    blend_steps = WindowBlender(n_steps, mh, mw, overlap) if keep_steps else None
    blend_chain = WindowBlender(n_steps + 1, mh, mw, overlap) if keep_steps else None  # x_T, then each step's x_s
    blend_att = WindowBlender(n_steps, mh, mw, overlap) if keep_steps and with_attention else None
    scale_y, scale_x = height / mh, width / mw
    for window_index, box in enumerate(boxes):
        y0, y1, x0, x1 = box
        window = on_model_grid[:, :, y0:y1, x0:x1].to(device)
        image_box = _box_on_image(box, scale_y, scale_x, (height, width))
        box_size = (image_box[1] - image_box[0], image_box[3] - image_box[2])
        step_maps, chain_maps, att_maps = [], [], []
        last_maps: dict[str, torch.Tensor] = {}
        for event in reverse_process(
            model,
            window,
            n_steps,
            samples,
            rng,
            with_attention,
            attention_kinds,
            measures=measures_kept,
            augment=augment,
        ):
            if event.stage == TICK:
                yield Progress(TICK, window_index * n_steps + event.index, total)
                continue
            if event.stage == "done":
                out: SampleOutput = event.payload
                planes = [out.probability[0]] + [out.uncertainty_maps[name][:1] for name in measures_kept]
                planes += [last_maps[kind][:1] for kind in final_kinds]
                blend_prob.add(box, torch.cat(planes).cpu().numpy())
                continue
            step: StepOutput = event.payload
            last_maps = step.attention_maps
            live_fg = live_att = live_chain = live_start = None
            if keep_steps:
                foreground = unit_foreground(step.x0_mean[0], config)
                step_maps.append(foreground.cpu().numpy())
                live_fg = _to_image_grid(foreground[None], box_size)[0]
                if step.step == 0:
                    noise = unit_foreground(step.x_from_mean[0], config)
                    chain_maps.append(noise.cpu().numpy())
                    live_start = _to_image_grid(noise[None], box_size)[0]
                reached = unit_foreground(step.x_to_mean[0], config)
                chain_maps.append(reached.cpu().numpy())
                live_chain = _to_image_grid(reached[None], box_size)[0]
                if step.attention is not None:
                    att_maps.append(step.attention[0].cpu().numpy())
                    live_att = _to_image_grid(step.attention[:1], box_size)[0]
            update = StepUpdate(
                window_index, len(boxes), step.step, n_steps, image_box, live_fg, live_att, live_chain, live_start
            )
            yield Progress("step", window_index * n_steps + step.step + 1, total, update)
        if blend_steps is not None and blend_chain is not None:  # both kept with keep_steps
            blend_steps.add(box, np.stack(step_maps))
            blend_chain.add(box, np.stack(chain_maps))
        if blend_att is not None and att_maps:
            blend_att.add(box, np.stack(att_maps))
    maps = _to_image_grid(torch.from_numpy(blend_prob.result()), (height, width))
    n_labels = config.label_channels
    probability = maps[:n_labels]
    measures = dict(zip(measures_kept, maps[n_labels : n_labels + len(measures_kept)], strict=True))
    final_attention = dict(zip(final_kinds, maps[n_labels + len(measures_kept) :], strict=True))
    uncertainty = measures.get(config.uncertainty_measure)
    labels = probability_to_labels(probability, image_mpp, threshold)
    if config.image_channels == 3:
        labels = keep_stained(labels, rgb, image_mpp)
    steps_stack, chain_stack, att_stack = (
        None if blender is None else _to_image_grid(torch.from_numpy(blender.result()), (height, width))
        for blender in (blend_steps, blend_chain, blend_att)
    )
    result = SegmentationResult(
        labels,
        probability,
        uncertainty,
        steps_stack,
        att_stack,
        time.perf_counter() - start,
        measures,
        final_attention,
        chain_stack,
    )
    yield Progress("done", total, total, result)
