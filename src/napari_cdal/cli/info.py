"""`napari-cdal info` and `napari-cdal view`: what a model file holds, and napari opened on images."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_cdal.cli.common import CliError


def _what_it_segments(config: dict[str, Any]) -> str:
    """One phrase for a model list: what a model of this config segments."""
    names = config.get("class_names") or ()
    if config.get("label_encoding") == "classes":
        return "volumes (.nii/.nii.gz), classes " + ", ".join(names[1:])
    return "H&E nuclei" if config.get("image_channels", 3) == 3 else "grayscale images, binary mask"


def list_known_models() -> int:
    """Print the bundled models (usable by name with --model) and the user's model folder."""
    from napari_cdal.catalog import list_models, model_dir, model_dir_problem
    from napari_cdal.engine.io.checkpoint import CheckpointError, read_metadata

    problem = model_dir_problem()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"models (give --model a name shown here, or any file; your folder: {model_dir()}):")
    for entry in list_models():
        try:
            config = read_metadata(entry.path).get("model_config", {})
            what = _what_it_segments(config)
        except (CheckpointError, OSError) as exc:
            what = f"unreadable ({exc})"
        print(f"  {entry.label}: {what} -> {entry.path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's config and training record (or, with --list, the models there are)."""
    if getattr(args, "list", False):
        return list_known_models()
    import torch

    from napari_cdal.catalog import bundled_models
    from napari_cdal.engine.config import ModelConfig, current_record
    from napari_cdal.engine.io.checkpoint import read_metadata
    from napari_cdal.engine.method.model import resolve_model_path

    path = resolve_model_path(args.model)
    meta = read_metadata(path)
    record = current_record(meta.get("record", {}))  # a record written before reads under today's names
    bundled = path in bundled_models().values()
    print(f"model: {path}{' (bundled)' if bundled else ''}")
    print(f"kind: {meta.get('kind')}, written by napari-cdal {meta.get('package_version')}")
    print("config:")
    config = meta.get("model_config", {})
    try:  # under today's names, also for a file written before a setting was renamed
        config = ModelConfig.from_dict(config).to_dict()
    except (TypeError, ValueError):
        pass
    for key, value in config.items():
        print(f"  {key}: {value}")
    print("training record:")
    for key in (
        "data",
        "iterations",
        "wall_seconds",
        "device",
        "train_config",
        "train_tiles",
        "validation_tiles",
        "initialised_from",
        "best",
        "finetuned_from",
        "bundled",
    ):
        if key in record:
            print(f"  {key}: {record[key]}")
    if "error_discriminator" in record:  # the tiles are the run's training tiles, printed above
        made = {k: v for k, v in record["error_discriminator"].items() if k != "tiles"}
        print(f"  error_discriminator: {made}")
    if record.get("validation"):
        print(
            "  validation: "
            + "; ".join(
                f"step {v['step']}: "
                + ", ".join(
                    f"{key} {value:.3f}" for key, value in v.items() if key != "step" and isinstance(value, float)
                )
                for v in record["validation"]
            )
        )
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


def open_viewer(images: Sequence[str | Path], sample: bool) -> Any:
    """A napari viewer with the images (and/or the sample tile) open and the Segment widget docked.

    Each file is opened as File > Open would (napari-cdal being the preferred reader of tiles, slides and volumes)."""
    import napari

    from napari_cdal._reader import prefer_napari_cdal_readers

    missing = [str(p) for p in images if not Path(p).exists()]
    if missing:
        raise CliError(f"image file not found: {', '.join(missing)}")
    viewer = napari.Viewer()
    prefer_napari_cdal_readers()
    for path in images:
        viewer.open(str(path), plugin=None)  # napari's reader preferences, not its own reader
    if sample:
        viewer.open_sample("napari-cdal", "monuseg")
    viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
    return viewer


def cmd_view(args: argparse.Namespace) -> int:
    """Open napari with the images (or the sample tile) and the Segment widget docked."""
    import os

    import napari

    if sys.platform.startswith("linux") and not any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    ):
        raise CliError(
            "no display to open napari on ($DISPLAY is not set): run it on a desktop, "
            "or under a virtual one with xvfb-run"
        )
    open_viewer(args.images, args.sample)
    napari.run()
    return 0
