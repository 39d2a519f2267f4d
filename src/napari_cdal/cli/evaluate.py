"""`napari-cdal evaluate`: a model scored on a folder with ground truth, as a table and JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_cdal.cli import common
from napari_cdal.cli.common import CliError
from napari_cdal.engine.defaults import AUGMENT_SAMPLES


def _format_table(rows: list[dict[str, Any]], mean: dict[str, Any], seconds: float | None) -> str:
    def cell(value: Any) -> str:
        return "   -  " if value is None else f"{value:6.3f}"

    width = max([len("image")] + [len(r["image"]) for r in rows])
    lines = [f"{'image':<{width}}   dice    iou    aji     pq  nuclei  seconds"]
    for r in rows:
        lines.append(
            f"{r['image']:<{width}} "
            + " ".join(cell(r[k]) for k in ("dice", "iou", "aji", "pq"))
            + f"  {r['nuclei']:6d}  {r['seconds']:7.1f}"
        )
    lines.append(
        f"{'mean':<{width}} "
        + " ".join(cell(mean[k]) for k in ("dice", "iou", "aji", "pq"))
        + f"          {seconds or 0:7.1f}"
    )
    return "\n".join(lines)


def _format_class_table(
    rows: list[dict[str, Any]], mean: dict[str, Any], seconds: float | None, class_names: tuple[str, ...]
) -> str:
    """Per-volume Dice and IoU of each class, then the means."""
    keys = [f"{kind}_{name}" for kind in ("dice", "iou") for name in class_names[1:]]
    width = max([len("volume")] + [len(r["image"]) for r in rows])
    head = "".join(f" {key:>{max(8, len(key))}}" for key in keys)
    lines = [f"{'volume':<{width}}{head}  seconds"]
    for label, values, secs in [(r["image"], r, r["seconds"]) for r in rows] + [("mean", mean, seconds or 0.0)]:
        lines.append(
            f"{label:<{width}}" + "".join(f" {values[key]:>{max(8, len(key))}.3f}" for key in keys) + f"  {secs:7.1f}"
        )
    return "\n".join(lines)


def _check_results_file(path: str | None) -> None:
    """--json may replace an earlier evaluate result, never another file (a split file, say)."""
    from napari_cdal.engine.checks import check_output_file

    if path is None:
        return
    target = check_output_file(path, "--json")
    if not target.exists():
        return
    try:
        earlier = json.loads(target.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        earlier = None
    if not (isinstance(earlier, dict) and {"per_image", "mean"} <= set(earlier)):
        raise CliError(
            f"--json {target} exists and is not an earlier evaluate result; it is kept: choose another file name"
        )


def _check_evaluate_memory(args: argparse.Namespace, model: Any, names: list[str], volumes: bool, steps: int) -> None:
    """The largest image or volume, segmented with K samples, must fit in the free memory (from the headers)."""
    from napari_cdal.engine.checks import check_memory, segment_peak_bytes, volume_peak_bytes
    from napari_cdal.engine.data.tiles import image_path
    from napari_cdal.engine.data.volumes import volume_path
    from napari_cdal.engine.io.images import plane_size, read_header
    from napari_cdal.engine.io.volumes import read_volume_header
    from napari_cdal.engine.segment.volume import SLICES_PER_BATCH

    samples = model.config.default_samples if args.samples is None else args.samples
    fix = "give fewer --samples"
    for name in names:
        if volumes:
            path = volume_path(args.data_dir, name)
            shape, _ = read_volume_header(path, placed=False)  # nothing is written with its affine
            needed = volume_peak_bytes(shape, model.config, steps, samples, SLICES_PER_BATCH, keep_steps=False)
            check_memory(needed, f"{path} ({' x '.join(map(str, shape))} voxels, {samples} samples)", fix)
        else:
            path = image_path(args.data_dir, name)
            height, width = plane_size(read_header(path), str(path))
            check_memory(
                segment_peak_bytes(height, width, args.mpp, model.config, steps, samples, False, False),
                f"{path} ({height} x {width} px, {samples} samples)",
                fix + ", or crop the images into tiles of a few thousand pixels a side",
            )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model on a MoNuSeg-layout folder; print the table and write the JSON."""
    from napari_cdal.engine.data.tiles import list_tiles, load_folder
    from napari_cdal.engine.data.volumes import is_volume_folder, list_volumes, load_volume
    from napari_cdal.engine.io.checkpoint import atomic_write
    from napari_cdal.engine.segment.evaluate import evaluate_tiles
    from napari_cdal.engine.segment.volume import evaluate_volumes

    common.check_runtime(args)
    _check_results_file(args.json)
    split = common.read_split(args.split)
    names = split.get(args.subset) if split else None
    if split and names is None:
        raise CliError(f"split file {args.split} has no list named {args.subset!r}")
    volumes = is_volume_folder(args.data_dir)
    if names is None:
        names = list_volumes(args.data_dir) if volumes else list_tiles(args.data_dir)
    if not names:
        where = f"the {args.subset!r} list of {args.split}" if split else f"{Path(args.data_dir) / 'images'}"
        raise CliError(
            f"no images to score: {where} is empty; a tile folder holds images/<id>.tif next to masks/<id>.png"
        )
    device = common.setup_torch(args)
    model = common.sampling_model(common.model_for(args.model, volumes=volumes), device, args)
    steps = common.check_sampling_steps(model, args)
    if volumes != model.config.is_multiclass:
        kind = "volumes" if volumes else "2-D tiles"
        raise CliError(
            f"{args.data_dir} holds {kind}, which {Path(model.source).name} does not segment; "
            + (
                "give a volume model, e.g. --model cdal_hippocampus"
                if volumes
                else "leave out --model for the bundled H&E model"
            )
        )
    _check_evaluate_memory(args, model, names, volumes, steps)
    if volumes:
        classes = model.config.label_channels
        events = evaluate_volumes(
            model,
            [load_volume(args.data_dir, name, classes) for name in names],
            sampling_steps=steps,
            samples=args.samples,
            seed=args.seed,
        )
    else:
        events = evaluate_tiles(
            model,
            load_folder(args.data_dir, names, model.config.image_channels),
            image_mpp=args.mpp,
            sampling_steps=steps,
            samples=args.samples,
            seed=args.seed,
            threshold=args.threshold,
        )
    done: dict[str, Any] | None = None
    with common.progress(len(names), "evaluate", "volume" if volumes else "image") as bar:
        for event in events:
            if event.stage == "image":
                bar.update(1)
            else:
                done = event.payload
    summary = common.finished(done, "evaluating")
    summary["model"] = str(model.source)
    summary["settings"] = {
        "sampling_steps": steps,
        "samples": model.config.default_samples if args.samples is None else args.samples,
        "seed": args.seed,
        "threshold": args.threshold,
        "mpp": args.mpp,
        "runtime": model.runtime.describe(),
        "augment": None if volumes else AUGMENT_SAMPLES,
    }
    if volumes:
        print(
            _format_class_table(
                summary["per_image"], summary["mean"], summary["seconds_per_image"], model.config.class_names
            )
        )
    else:
        print(_format_table(summary["per_image"], summary["mean"], summary["seconds_per_image"]))
    if args.json:
        text = json.dumps(summary, indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0
