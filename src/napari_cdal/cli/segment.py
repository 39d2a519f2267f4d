"""`napari-cdal segment`: images in, <stem>_labels.tif (and the maps behind it) out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_cdal.cli import common
from napari_cdal.cli.common import CliError
from napari_cdal.cli.segment_slides import (
    check_slide_block_memory,
    dask_client,
    is_slide,
    segment_slide_file,
    slide_mpp,
)
from napari_cdal.cli.segment_volumes import (
    VOLUME_OUTPUTS,
    check_model_fits,
    check_volume_memory,
    segment_volume_file,
    volume_outputs,
)
from napari_cdal.engine.slide.source import SLIDE_SUFFIXES, open_slide

if TYPE_CHECKING:
    import numpy as np


def _write_tiff(path: Path, array: Any) -> None:
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write

    # minisblack: a 3- or 4-plane stack (steps, chain, attention) is planes, not an RGB(A) picture
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib", photometric="minisblack"))


SEGMENT_OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("labels", "", "_labels.tif"),
    ("steps", "save_steps", "_steps.tif"),
    ("chain", "save_steps", "_chain.tif"),
    ("attention", "save_attention", "_attention.tif"),
    ("uncertainty", "save_uncertainty", "_uncertainty.tif"),
    ("geojson", "geojson", "_nuclei.geojson"),
    ("measurements", "measurements", "_nuclei.csv"),
    ("review", "review", "_review.csv"),
)
"""What segment writes per image: <stem><suffix>, always (no flag) or when the flag is given.

--save-steps writes x̂0 per step as _steps.tif (its meaning kept: scripts read it) and the chain as
sampled, x_T to x_0 (one plane more), as _chain.tif."""


def _segment_outputs(args: argparse.Namespace, out: Path, stem: str) -> dict[str, Path]:
    return {kind: out / f"{stem}{suffix}" for kind, flag, suffix in SEGMENT_OUTPUTS if not flag or getattr(args, flag)}


def _write_outputs(
    files: dict[str, Path], result: Any, pixels: Any, image_mpp: float, review: int | None = None
) -> None:
    """Every asked-for file of one image; the labels, polygons and tables share one numbering 1..N."""
    from napari_cdal.engine.io.detections import csv_text, geojson_text, write_text
    from napari_cdal.engine.io.images import to_rgb_float
    from napari_cdal.engine.labels import relabel_sequential_uint
    from napari_cdal.engine.segment.measurements import nucleus_measurements
    from napari_cdal.engine.segment.review import review_items, review_table

    labels = relabel_sequential_uint(result.labels)
    table: dict[str, np.ndarray] = {}  # measured only when a file shows it
    if "geojson" in files or "measurements" in files:
        table = nucleus_measurements(labels, to_rgb_float(pixels, 3), image_mpp, result.uncertainty)
    maps = {
        "labels": labels,
        "steps": result.steps,
        "chain": result.chain,
        "attention": result.attention,
        "uncertainty": result.uncertainty,
    }
    for kind, file in files.items():
        if kind == "geojson":
            write_text(file, geojson_text(labels, table, object_type="detection"))
        elif kind == "measurements":
            write_text(file, csv_text(table))
        elif kind == "review":
            items = review_items(
                labels, result.probability, result.uncertainty, image_mpp, result.error_map, count=review
            )
            write_text(file, csv_text(review_table(items)))
        else:
            _write_tiff(file, maps[kind])


def _check_uncertainty_has_samples(args: argparse.Namespace, samples: int) -> None:
    """--save-uncertainty is refused with fewer than two samples: one sample has no spread."""
    if args.save_uncertainty and samples < 2:
        raise CliError(
            f"--save-uncertainty needs --samples 2 or more (got {samples}): one sample has no spread to measure"
        )


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment each image and write <stem>_labels.tif (and the optional maps) into --out."""
    from napari_cdal.engine.checks import (
        check_memory,
        check_new_outputs,
        check_output_folder,
        segment_peak_bytes,
    )
    from napari_cdal.engine.io.images import check_read_whole, plane_size, read_header
    from napari_cdal.engine.io.lock import output_lock
    from napari_cdal.engine.io.outputs import recover_output_set
    from napari_cdal.engine.io.volumes import is_volume_path, read_volume_header, volume_stem

    common.check_runtime(args)
    images = [Path(p) for p in args.images]
    if args.sample:
        from napari_cdal.sample_data import sample_tile_path

        images.append(sample_tile_path())
    if not images:
        raise CliError("give at least one image file, or --sample for the bundled MoNuSeg tile")
    stems: dict[str, Path] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    volumes = [path for path in images if is_volume_path(path)]
    for path in images:
        stem = volume_stem(path) if path in volumes else path.stem
        if stem in stems:
            written = f"{stem}_labels.nii.gz" if path in volumes else f"{stem}_labels.tif"
            raise CliError(f"{stems[stem]} and {path} would both write {written}; rename one")
        stems[stem] = path
        if path in volumes:
            read_volume_header(path)
        else:
            sizes[path] = plane_size(read_header(path), str(path))
    out = check_output_folder(args.out)
    outputs = {
        path: volume_outputs(args, out, volume_stem(path))
        if path in volumes
        else _segment_outputs(args, out, path.stem)
        for path in images
    }
    on_cluster = bool(args.workers or args.scheduler)
    slides = [path for path in images if path not in volumes and is_slide(path, sizes[path], args.slide or on_cluster)]
    for path in slides:
        extra = [
            "--" + flag.replace("_", "-")
            for kind, flag, _ in SEGMENT_OUTPUTS
            if kind in outputs[path] and kind in ("steps", "attention", "uncertainty")
        ]
        if extra:
            raise CliError(
                f"{path} is segmented as a whole slide, which writes labels, GeoJSON and CSV but no "
                f"per-pixel maps; leave out {' '.join(extra)}"
            )
        if "review" in outputs[path]:
            raise CliError(
                f"{path} is segmented as a whole slide, which has no review list (its probability maps "
                "are not kept); leave out --review, or segment a tile or region of it"
            )
        if path.suffix.lower() in SLIDE_SUFFIXES:  # a file each block would decode whole is refused from its header
            open_slide(path).close()
        outputs[path]["store"] = out / f"{path.stem}_labels.zarr"  # resumable: an existing store goes on
        if args.tissue == "auto":
            outputs[path]["tissue"] = out / f"{path.stem}_tissue.png"
    for path in images:  # read whole: a slide's size has no cap, it is read block by block
        if path not in slides and path not in volumes:
            check_read_whole(*sizes[path], str(path))
    check_new_outputs(
        [file for files in outputs.values() for kind, file in files.items() if kind != "store"], args.overwrite
    )
    if args.samples is not None:  # known before the model loads
        _check_uncertainty_has_samples(args, args.samples)
    device = common.setup_torch(args)
    model = common.sampling_model(
        common.model_for(args.model, volumes=bool(volumes) and len(volumes) == len(images)), device, args
    )
    check_model_fits(model, volumes, images)
    if model.config.model_side and slides:  # a model that sees images whole never cuts them into blocks
        if args.slide or on_cluster:
            raise CliError(
                f"{Path(model.source).name} sees each image whole at {model.config.model_side} px on its "
                "longer side; leave out --slide, --workers and --scheduler"
            )
        for path in slides:
            del outputs[path]["store"]
            outputs[path].pop("tissue", None)
            check_read_whole(*sizes[path], str(path))
        slides = []
    steps = common.check_sampling_steps(model, args)
    samples = model.config.default_samples if args.samples is None else args.samples
    _check_uncertainty_has_samples(args, samples)
    want_maps = args.save_steps or args.save_attention
    slide_mpps = {path: slide_mpp(args, path) for path in slides}  # an unreadable slide is named before any work
    for path in slides:
        check_slide_block_memory(path, slide_mpps[path], model, steps, samples)
    for path in images:
        if path in slides:
            continue
        if path in volumes:
            check_volume_memory(path, model, steps, samples, args)
            continue
        check_memory(
            segment_peak_bytes(*sizes[path], args.mpp, model.config, steps, samples, want_maps, args.save_attention),
            f"{path} ({sizes[path][0]} x {sizes[path][1]} px, {samples} samples)",
            "give fewer --samples, or crop it into tiles of a few thousand pixels a side and segment those",
        )
    with output_lock([files["labels"] for files in outputs.values()]):
        for files in outputs.values():  # a set a killed run had completed is moved in first
            recover_output_set(files["labels"])
        check_new_outputs(
            [file for files in outputs.values() for kind, file in files.items() if kind != "store"], args.overwrite
        )
        client, cluster = dask_client(args) if slides else (None, None)
        try:
            _segment_all(args, model, images, slide_mpps, outputs, steps, samples, want_maps, client)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:  # a cluster this command started ends with it
                cluster.close()
    return 0


def _replaced_members(args: argparse.Namespace, out: Path, path: Path, volume: bool) -> list[Path]:
    """The files an earlier run wrote for this image that this run does not write (--overwrite removes them with
    the set they belong to: their ids would not match the new labels)."""
    from napari_cdal.engine.io.volumes import volume_stem

    if not args.overwrite:
        return []
    stem = volume_stem(path) if volume else path.stem
    kinds = VOLUME_OUTPUTS if volume else SEGMENT_OUTPUTS
    return [out / f"{stem}{suffix}" for _, _, suffix in kinds] + ([] if volume else [out / f"{stem}_tissue.png"])


def _segment_all(
    args: argparse.Namespace,
    model: Any,
    images: list[Path],
    slides: dict[Path, float],
    outputs: dict[Path, dict[str, Path]],
    steps: int,
    samples: int,
    want_maps: bool,
    client: Any,
) -> None:
    """Each image in turn: a slide through engine.slide (on the cluster if any), a tile in memory; each image's
    files are written as one set (io.outputs), so a run stopped half-way leaves the earlier set whole."""
    from napari_cdal.engine.io.outputs import output_set
    from napari_cdal.engine.io.volumes import is_volume_path

    for path in images:
        files = {kind: file for kind, file in outputs[path].items() if kind != "store"}
        replaced = [
            file
            for file in _replaced_members(args, Path(args.out), path, is_volume_path(path))
            if file.exists() and file not in files.values()
        ]
        with output_set(files, files["labels"], replaced) as staged:
            if "store" in outputs[path]:
                staged["store"] = outputs[path]["store"]
            if path in slides:
                said = segment_slide_file(args, model, path, staged, slides[path], steps, samples, client)
            elif is_volume_path(path):
                said = segment_volume_file(args, model, path, staged, steps, samples)
            else:
                said = _segment_tile(args, model, path, staged, steps, samples, want_maps)
        gone = [file.name for file in replaced if not file.exists()]
        print(f"{said} -> {files['labels']}" + (f" (and {outputs[path]['store'].name})" if path in slides else ""))
        if gone:
            print(
                f"note: removed {', '.join(gone)} of the earlier run: the new labels' ids are not theirs",
                file=sys.stderr,
            )


def _segment_tile(
    args: argparse.Namespace, model: Any, path: Path, files: dict[str, Path], steps: int, samples: int, want_maps: bool
) -> str:
    """One image read whole: its reading notes said, segmented, its files written; returns the line that says what
    was found."""
    from napari_cdal.engine.events import TICK, run_to_end
    from napari_cdal.engine.io.images import ImageError, check_pixels, read_header, read_image, reading_notes
    from napari_cdal.engine.segment.image import segment_image

    errors_for_review = bool(args.review) and model.config.disc_kind == "pixel"  # Review's error map is D's
    pixels = read_image(path)
    try:
        check_pixels(pixels)
    except ImageError as exc:  # name the file: the check only knows the pixels
        raise ImageError(f"{path}: {exc}") from exc
    for note in reading_notes(pixels, model.config.image_channels, read_header(path)):
        print(f"note: {path.name}: {note}", file=sys.stderr)
    bar = common.progress(0, path.name, "step")  # at 0 before the work; the steps' count comes with the first

    def show(event: Any) -> None:
        if event.stage != TICK:
            common.advance(bar, event.index, event.total)

    try:
        result = run_to_end(
            segment_image(
                model,
                pixels,
                image_mpp=args.mpp,
                sampling_steps=steps,
                samples=samples,
                seed=args.seed,
                threshold=args.threshold,
                keep_steps=want_maps,
                with_attention=args.save_attention or errors_for_review,
            ),
            show,
        )
    except ImageError as exc:  # name the file: the engine only knows the pixels
        raise ImageError(f"{path}: {exc}") from exc
    finally:
        bar.close()
    _write_outputs(files, result, pixels, args.mpp, args.review)
    return f"{path.name}: {result.n_nuclei} nuclei, mean area {result.mean_area_px():.0f} px, {result.seconds:.1f} s"
