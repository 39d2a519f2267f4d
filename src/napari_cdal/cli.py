"""The `napari-cdal` command: segment, evaluate, train, finetune, info (thin wrappers over the engine)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_BAD_INPUT = 1
DEFAULT_DATA_MPP = 0.25


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _progress(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def _setup_torch(args: argparse.Namespace) -> Any:
    import torch

    from .engine.device import resolve_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def _load_model(path: str | None, device: Any) -> Any:
    from .engine.model import load_model

    return load_model(path, device)


def _write_tiff(path: Path, array: Any) -> None:
    import tifffile

    from .engine.checkpoint import atomic_write

    # minisblack: a 3- or 4-plane stack (steps, attention) is planes, not an RGB(A) picture
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib", photometric="minisblack"))


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment each image and write <stem>_labels.tif (and the optional maps) into --out."""
    from .engine.events import run_to_end
    from .engine.instances import relabel_sequential_uint
    from .engine.io import ImageError, read_image
    from .engine.segment import segment_image

    images = [Path(p) for p in args.images]
    if args.sample:
        from .sample_data import sample_tile_path

        images.append(sample_tile_path())
    if not images:
        raise CliError("give at least one image file, or --sample for the bundled MoNuSeg tile")
    stems: dict[str, Path] = {}
    for path in images:
        if not path.exists():
            raise CliError(f"image file not found: {path}")
        if path.stem in stems:
            raise CliError(f"{stems[path.stem]} and {path} would both write {path.stem}_labels.tif; rename one")
        stems[path.stem] = path
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    device = _setup_torch(args)
    model = _load_model(args.model, device)
    samples = model.config.default_samples if args.samples is None else args.samples
    if args.save_uncertainty and samples < 2:
        raise CliError(f"--save-uncertainty needs --samples 2 or more (got {samples}): "
                       "one sample has no spread to measure")
    want_maps = args.save_steps or args.save_attention
    for path in images:
        pixels = read_image(path)
        steps = model.config.default_steps if args.steps is None else args.steps
        bars: list[Any] = []  # opened at the first step, so a rejected image leaves only the error line

        def show(event: Any, name: str = path.name) -> None:
            if not bars:
                bars.append(_progress(event.total, name, "step"))
            bars[0].n = event.index
            bars[0].refresh()

        try:
            result = run_to_end(segment_image(
                model, pixels, image_mpp=args.mpp, steps=steps, samples=samples, seed=args.seed,
                threshold=args.threshold, keep_steps=want_maps, with_attention=args.save_attention,
            ), show)
        except ImageError as exc:  # name the file: the engine only knows the pixels
            raise ImageError(f"{path}: {exc}") from exc
        finally:
            for bar in bars:
                bar.close()
        _write_tiff(out / f"{path.stem}_labels.tif", relabel_sequential_uint(result.labels))
        if args.save_steps:
            _write_tiff(out / f"{path.stem}_steps.tif", result.steps)
        if args.save_attention:
            _write_tiff(out / f"{path.stem}_attention.tif", result.attention)
        if args.save_uncertainty:
            _write_tiff(out / f"{path.stem}_uncertainty.tif", result.uncertainty)
        print(f"{path.name}: {result.n_nuclei} nuclei, mean area {result.mean_area_px():.0f} px, "
              f"{result.seconds:.1f} s -> {out / (path.stem + '_labels.tif')}")
    return 0


def _format_table(rows: list[dict[str, Any]], mean: dict[str, Any], seconds: float | None) -> str:
    def cell(value: Any) -> str:
        return "   -  " if value is None else f"{value:6.3f}"

    width = max([len("image")] + [len(r["image"]) for r in rows])
    lines = [f"{'image':<{width}}   dice    iou    aji     pq  nuclei  seconds"]
    for r in rows:
        lines.append(f"{r['image']:<{width}} " + " ".join(cell(r[k]) for k in ("dice", "iou", "aji", "pq"))
                     + f"  {r['nuclei']:6d}  {r['seconds']:7.1f}")
    lines.append(f"{'mean':<{width}} " + " ".join(cell(mean[k]) for k in ("dice", "iou", "aji", "pq"))
                 + f"          {seconds or 0:7.1f}")
    return "\n".join(lines)


def _read_split(path: str | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    split = _read_json_object(path, "split file",
                              'a JSON object of name lists, e.g. {"train": [...], "validation": [...]}')
    return {key: value for key, value in split.items() if isinstance(value, list)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model on a MoNuSeg-layout folder; print the table and write the JSON."""
    from .engine.checkpoint import atomic_write
    from .engine.data import list_tiles, load_folder
    from .engine.evaluate import evaluate_tiles

    split = _read_split(args.split)
    names = split.get(args.subset) if split else None
    if split and names is None:
        raise CliError(f"split file {args.split} has no list named {args.subset!r}")
    if names is None:
        names = list_tiles(args.data_dir)
    device = _setup_torch(args)
    model = _load_model(args.model, device)
    tiles = load_folder(args.data_dir, names)
    summary = None
    with _progress(len(tiles), "evaluate", "image") as bar:
        for event in evaluate_tiles(model, tiles, image_mpp=args.mpp, steps=args.steps, samples=args.samples,
                                    seed=args.seed, threshold=args.threshold):
            if event.stage == "image":
                bar.update(1)
            else:
                summary = event.payload
    summary["model"] = str(model.source)
    summary["settings"] = {"steps": model.config.default_steps if args.steps is None else args.steps,
                           "samples": model.config.default_samples if args.samples is None else args.samples, "seed": args.seed, "threshold": args.threshold, "mpp": args.mpp}
    print(_format_table(summary["per_image"], summary["mean"], summary["seconds_per_image"]))
    if args.json:
        text = json.dumps(summary, indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


def _read_json_object(path: str, what: str, expected: str = "a JSON object of settings") -> dict[str, Any]:
    """A JSON object from a file named by an option; a one-line CliError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"{what} {path} must be {expected}")
    return data


def _train_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    from .engine.config import TrainConfig

    values = dict(base or {})
    if getattr(args, "train_config", None):
        values.update(_read_json_object(args.train_config, "--train-config"))
    for key in ("steps", "batch_size", "patch_size", "seed", "checkpoint_every", "validate_every"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return TrainConfig.from_dict(values)


def _model_config(spec: str | None) -> Any:
    from .engine.config import PRESETS, ModelConfig

    if spec is None:
        return ModelConfig(**PRESETS["medium"])
    if spec in PRESETS:
        return ModelConfig(**PRESETS[spec])
    path = Path(spec)
    if not path.exists():
        raise CliError(f"--config must be one of {sorted(PRESETS)} or a JSON file; {spec} is neither")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CliError(f"cannot read model config {path}: {exc}") from exc


def _adapted_model(model: Any, spec: str, seed: int) -> Any:
    """--init-from with --config JSON: the model's config with those keys changed, weights carried over."""
    from .engine.config import PRESETS, ModelConfig
    from .engine.model import with_new_config

    if spec in PRESETS:
        raise CliError("with --init-from, --config must be a JSON file of the config keys to change, not a preset")
    changes = _read_json_object(spec, "--config")
    config = ModelConfig.from_dict({**model.config.to_dict(), **changes})
    return with_new_config(model, config, seed)


def state_path(out: Path) -> Path:
    """Where `train` keeps its resumable state beside the model file."""
    return out.with_name(out.stem + ".state.safetensors")


def cmd_train(args: argparse.Namespace) -> int:
    """Train cDAL on a MoNuSeg-layout folder; keep the best model (by validation) at --out."""
    from .engine.data import list_tiles, load_folder
    from .engine.model import CdalModel, save_model
    from .engine.training import TrainState, training_loop
    from .engine.trainer import make_patch_source, make_validation, prepare_tiles

    out = Path(args.out)
    device = _setup_torch(args)
    split = _read_split(args.split)
    resume_from = state_path(out)
    if args.resume:
        if not resume_from.exists():
            raise CliError(f"--resume given but no training state at {resume_from}")
        state = TrainState.load(resume_from, device)
        if args.steps is not None:
            state = TrainState.load(resume_from, device, _train_config(args, state.train_config.to_dict()))
        # go on with the recorded data settings unless told otherwise, so a resumed run repeats exactly
        mpp = state.record.get("data_mpp", DEFAULT_DATA_MPP) if args.mpp is None else args.mpp
        train_names = split.get("train") or state.record.get("train_tiles") or list_tiles(args.data_dir)
        val_names = (split.get("validation") if split else state.record.get("validation_tiles")) or []
    else:
        mpp = DEFAULT_DATA_MPP if args.mpp is None else args.mpp
        train_names = split.get("train") or list_tiles(args.data_dir)
        val_names = split.get("validation") or []
        cfg = _train_config(args)
        if args.init_from:
            model = _load_model(args.init_from, device)
            if args.config:
                model = _adapted_model(model, args.config, cfg.seed).to(device)
        else:
            model = CdalModel.initialise(_model_config(args.config), cfg.seed).to(device)
        state = TrainState.create(model, cfg)
        state.record.update({"data": Path(args.data_dir).name, "train_tiles": train_names,
                             "validation_tiles": val_names, "data_mpp": mpp,
                             "device": str(device), "best": None})
        if args.init_from:
            state.record["initialised_from"] = {"model": str(args.init_from), "steps": model.record.get("steps")}
    config = state.model.config
    train_tiles = prepare_tiles(load_folder(args.data_dir, train_names), mpp, config)
    val_tiles = load_folder(args.data_dir, val_names) if val_names else []
    sample_batch = make_patch_source(train_tiles, state, config)
    on_validate = make_validation(val_tiles, mpp, out) if val_tiles else None

    def on_checkpoint(s: TrainState) -> None:
        s.save(resume_from)
        if not val_tiles:
            save_model(out, s.exported_model())

    bar = _progress(state.train_config.steps, "train", "step")
    bar.n = state.step
    for event in training_loop(state, sample_batch, device, on_checkpoint, on_validate):
        if event.stage == "train":
            bar.n = event.index
            bar.set_postfix({k: f"{v:.3f}" for k, v in event.payload.items() if k in ("mse", "dice", "d")})
        elif event.stage == "validate_done":
            bar.write(f"step {state.step}: validation " + ", ".join(
                f"{k} {v:.3f}" for k, v in event.payload.items() if isinstance(v, float)))
    bar.close()
    print(f"trained {state.step} steps in {state.record['wall_seconds'] / 60:.1f} min; model: {out}")
    return 0


def _read_mask(path: Path) -> Any:
    """A label image from a file; a grey image saved as RGB(A) becomes its one channel."""
    from .engine.io import read_image

    mask = read_image(path)
    if mask.ndim == 3 and all((mask[..., c] == mask[..., 0]).all() for c in range(1, min(mask.shape[-1], 3))):
        mask = mask[..., 0]
    return mask


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a model on images with corrected masks; write the new model at --out, never over a file."""
    from .engine.finetune import FinetuneConfig, FinetunePair, finetune, save_finetuned, suggest_new_name
    from .engine.io import read_image

    images, masks = [Path(p) for p in args.images], [Path(p) for p in args.masks]
    if len(images) != len(masks):
        raise CliError(f"got {len(images)} images but {len(masks)} --masks; give one mask per image, in the same order")
    out = Path(args.out)
    if out.exists():
        raise CliError(f"--out {out} already exists and fine-tuning never replaces a file; "
                       f"choose a new name, e.g. {suggest_new_name(out)}")
    pairs = [FinetunePair(read_image(image), _read_mask(mask), None, f"{image.name} with {mask.name}")
             for image, mask in zip(images, masks)]
    overrides = {key: getattr(args, key) for key in ("steps", "seed") if getattr(args, key) is not None}
    if args.lr is not None:
        overrides.update(lr_g=args.lr, lr_d=args.lr / 2)
    settings = FinetuneConfig(**overrides)
    device = _setup_torch(args)
    model = _load_model(args.model, device)
    bars: list[Any] = []  # opened at the first step, so rejected input leaves only the error line
    result = None
    try:
        for event in finetune(model, pairs, settings, device, args.mpp):
            if event.stage == "train":
                if not bars:
                    bars.append(_progress(event.total, "finetune", "step"))
                bars[0].n = event.index
                bars[0].set_postfix({k: f"{v:.3f}" for k, v in event.payload.items() if k in ("mse", "dice", "d")})
            elif event.stage == "done":
                result = event.payload
    finally:
        for bar in bars:
            bar.close()
    save_finetuned(result.model, out)
    print(f"fine-tuned {result.record['steps']} steps on {len(pairs)} image(s) in "
          f"{result.record['wall_seconds']:.0f} s; model: {out} (source {model.source} unchanged)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's config and training record."""
    import torch

    from .engine.checkpoint import read_metadata
    from .engine.model import bundled_model_path

    path = Path(args.model) if args.model else bundled_model_path()
    meta = read_metadata(path)
    record = meta.get("record", {})
    print(f"model: {path}{' (bundled)' if not args.model else ''}")
    print(f"kind: {meta.get('kind')}, written by napari-cdal {meta.get('package_version')}")
    print("config:")
    for key, value in meta.get("model_config", {}).items():
        print(f"  {key}: {value}")
    print("training record:")
    for key in ("data", "steps", "wall_seconds", "device", "train_config", "train_tiles",
                "validation_tiles", "initialised_from", "best", "finetuned_from", "bundled"):
        if key in record:
            print(f"  {key}: {record[key]}")
    if record.get("validation"):
        print("  validation: " + "; ".join(
            f"step {v['step']}: dice {v.get('dice', 0):.3f} aji {v.get('aji') or 0:.3f}" for v in record["validation"]))
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


def open_viewer(images: Sequence[str | Path], sample: bool) -> Any:
    """A napari viewer with the images (and/or the sample tile) open and the Segment widget docked."""
    import napari

    missing = [str(p) for p in images if not Path(p).exists()]
    if missing:
        raise CliError(f"image file not found: {', '.join(missing)}")
    viewer = napari.Viewer()
    for path in images:
        viewer.open(str(path))
    if sample:
        viewer.open_sample("napari-cdal", "monuseg")
    viewer.window.add_plugin_dock_widget("napari-cdal", "Segment")
    return viewer


def cmd_view(args: argparse.Namespace) -> int:
    """Open napari with the images (or the sample tile) and the Segment widget docked."""
    import os

    import napari

    if sys.platform.startswith("linux") and not any(
            os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        raise CliError("no display to open napari on ($DISPLAY is not set): run it on a desktop, "
                       "or under a virtual one with xvfb-run")
    open_viewer(args.images, args.sample)
    napari.run()
    return 0


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint (.safetensors); default: the bundled model")
    p.add_argument("--steps", type=int, default=None, help="reverse steps T (default: the model's)")
    p.add_argument("--samples", type=int, default=None,
                   help="latent samples K averaged per pixel; 2 or more give an uncertainty (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats a run (default: 0)")
    p.add_argument("--mpp", type=float, default=0.25, help="the image's µm per pixel (default: 0.25, a 40x tile)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (default: 0.5)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="napari-cdal", description="Nuclei segmentation with cDAL.")
    parser.add_argument("--version", action="version", version=f"napari-cdal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images into nucleus instance labels")
    p.add_argument("images", nargs="*", help="image files (TIFF, PNG, JPEG)")
    p.add_argument("--sample", action="store_true", help="also segment the bundled MoNuSeg sample tile")
    p.add_argument("--out", required=True, help="output folder")
    _add_sampling(p)
    p.add_argument("--save-steps", action="store_true", help="also write <stem>_steps.tif (x̂0 per step)")
    p.add_argument("--save-attention", action="store_true", help="also write <stem>_attention.tif")
    p.add_argument("--save-uncertainty", action="store_true", help="also write <stem>_uncertainty.tif")
    _add_runtime(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="score a model on a folder with ground truth")
    p.add_argument("data_dir", help="folder with images/<id>.tif and masks/<id>.png (MoNuSeg layout)")
    _add_sampling(p)
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--split", default=None, help="JSON file of tile-name lists; score only one of them")
    p.add_argument("--subset", default="validation", help="which list of --split to score (default: validation)")
    _add_runtime(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model on a MoNuSeg-layout folder")
    p.add_argument("data_dir", help="folder with images/ and masks/ (MoNuSeg layout)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--steps", type=int, default=None, help="total training steps")
    p.add_argument("--resume", action="store_true", help="go on from <out>.state.safetensors")
    p.add_argument("--config", default=None,
                   help="model preset (tiny, small, medium, large) or a JSON file; with --init-from, a JSON "
                        "file of the config keys to change (e.g. {\"self_condition\": true})")
    p.add_argument("--train-config", default=None,
                   help="JSON file of training settings to change (e.g. {\"adversarial_weight\": 0.3})")
    p.add_argument("--init-from", default=None, help="start a new run from this model's weights (not its optimiser state)")
    p.add_argument("--split", default=None, help="JSON with 'train' and 'validation' tile-name lists")
    p.add_argument("--mpp", type=float, default=None,
                   help=f"µm per pixel of the data (default: {DEFAULT_DATA_MPP}; with --resume, the recorded one)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--validate-every", type=int, default=None)
    _add_runtime(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a model on images with corrected masks")
    p.add_argument("images", nargs="+", help="image files (TIFF, PNG, JPEG)")
    p.add_argument("--masks", nargs="+", required=True,
                   help="one corrected mask per image, same size: instance ids or binary (0 = background)")
    p.add_argument("--model", default=None, help="model to start from (.safetensors); default: the bundled model")
    p.add_argument("--out", required=True, help="new model file to write (.safetensors); never replaces a file")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 150)")
    p.add_argument("--mpp", type=float, default=0.25, help="the images' µm per pixel (default: 0.25, a 40x tile)")
    p.add_argument("--lr", type=float, default=None,
                   help="generator learning rate; the discriminator gets half (default: 0.0001)")
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed repeats a run (default: 0)")
    _add_runtime(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("info", help="print a model's config and training record")
    p.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    p.add_argument("--json", action="store_true", help="also print the whole metadata as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("view", help="open napari with the Segment widget docked")
    p.add_argument("images", nargs="*", help="image files to open")
    p.add_argument("--sample", action="store_true", help="also open the bundled MoNuSeg sample tile")
    p.set_defaults(func=cmd_view)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn known errors into one line on stderr and exit status 1."""
    from .engine.checkpoint import CheckpointError
    from .engine.io import ImageError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, CheckpointError, ImageError, FileNotFoundError, ValueError) as exc:
        print(f"napari-cdal {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"napari-cdal {args.command}: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
