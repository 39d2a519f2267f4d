"""The `napari-cdal` command: segment, evaluate, train, finetune, info (thin wrappers over the engine)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_cdal.engine.defaults import (
    DEFAULT_IMAGE_MPP,
    DEFAULT_THRESHOLD,
    DEVICE_CHOICES,
    FINETUNE_D_LR_RATIO,
    FINETUNE_SETTINGS,
)

EXIT_BAD_INPUT = 1


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _progress(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def _check_runtime(args: argparse.Namespace) -> None:
    """The options every computing command shares, checked before anything is loaded."""
    from napari_cdal.engine.checks import check_at_least, check_mpp, check_threshold

    check_at_least(getattr(args, "threads", None), 1, "--threads")
    if getattr(args, "mpp", None) is not None:
        check_mpp(args.mpp)
    if getattr(args, "threshold", None) is not None:
        check_threshold(args.threshold)
    for dest, names in (("sampling_steps", ("--sampling-steps", "--steps")), ("samples", ("--samples",)),
                        ("iterations", ("--iterations", "--steps"))):
        check_at_least(getattr(args, dest, None), 1, _typed(args, *names))


def _typed(args: argparse.Namespace, *names: str) -> str:
    """Which of an option's names the user typed (a former name is an alias), so an error uses that one."""
    typed = getattr(args, "typed_options", ())
    return next((name for name in names if name in typed), names[0])


def _setup_torch(args: argparse.Namespace) -> Any:
    import torch

    from napari_cdal.engine.device import resolve_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def _load_model(path: str | None, device: Any) -> Any:
    from napari_cdal.engine.method.model import load_model

    return load_model(path, device)


def _check_sampling_steps(model: Any, args: argparse.Namespace) -> int:
    """The reverse steps to sample: the model's default, or --sampling-steps within the model's diffusion steps T."""
    if args.sampling_steps is None:
        return model.config.sampling_steps
    if args.sampling_steps > model.config.diffusion_steps:
        raise CliError(f"{_typed(args, '--sampling-steps', '--steps')} {args.sampling_steps} is more than this "
                       f"model's {model.config.diffusion_steps} diffusion steps; give 1 to "
                       f"{model.config.diffusion_steps}")
    return args.sampling_steps


def _write_tiff(path: Path, array: Any) -> None:
    import tifffile

    from napari_cdal.engine.io.checkpoint import atomic_write

    # minisblack: a 3- or 4-plane stack (steps, attention) is planes, not an RGB(A) picture
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib", photometric="minisblack"))


SEGMENT_OUTPUTS = (("labels", True), ("steps", "save_steps"), ("attention", "save_attention"),
                   ("uncertainty", "save_uncertainty"))
"""What segment writes per image: <stem>_<kind>.tif, always or when the flag is given."""


def _segment_outputs(args: argparse.Namespace, out: Path, stem: str) -> dict[str, Path]:
    return {kind: out / f"{stem}_{kind}.tif" for kind, flag in SEGMENT_OUTPUTS
            if flag is True or getattr(args, flag)}


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment each image and write <stem>_labels.tif (and the optional maps) into --out."""
    from napari_cdal.engine.checks import (
        check_memory,
        check_new_outputs,
        check_output_folder,
        segment_peak_bytes,
    )
    from napari_cdal.engine.events import run_to_end
    from napari_cdal.engine.io.images import ImageError, plane_size, read_header, read_image
    from napari_cdal.engine.labels import relabel_sequential_uint
    from napari_cdal.engine.segment.image import segment_image

    _check_runtime(args)
    images = [Path(p) for p in args.images]
    if args.sample:
        from napari_cdal.sample_data import sample_tile_path

        images.append(sample_tile_path())
    if not images:
        raise CliError("give at least one image file, or --sample for the bundled MoNuSeg tile")
    stems: dict[str, Path] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    for path in images:
        if path.stem in stems:
            raise CliError(f"{stems[path.stem]} and {path} would both write {path.stem}_labels.tif; rename one")
        stems[path.stem] = path
        sizes[path] = plane_size(read_header(path), str(path))
    out = check_output_folder(args.out)
    outputs = {path: _segment_outputs(args, out, path.stem) for path in images}
    check_new_outputs([file for files in outputs.values() for file in files.values()], args.overwrite)
    device = _setup_torch(args)
    model = _load_model(args.model, device)
    steps = _check_sampling_steps(model, args)
    samples = model.config.default_samples if args.samples is None else args.samples
    if args.save_uncertainty and samples < 2:
        raise CliError(f"--save-uncertainty needs --samples 2 or more (got {samples}): "
                       "one sample has no spread to measure")
    want_maps = args.save_steps or args.save_attention
    for path in images:
        check_memory(segment_peak_bytes(*sizes[path], args.mpp, model.config, steps, samples, want_maps,
                                        args.save_attention), f"{path} ({sizes[path][0]} x {sizes[path][1]} px)")
    for path in images:
        pixels = read_image(path)
        bars: list[Any] = []  # opened at the first step, so a rejected image leaves only the error line

        def show(event: Any, name: str = path.name, bars: list[Any] = bars) -> None:
            if not bars:
                bars.append(_progress(event.total, name, "step"))
            bars[0].n = event.index
            bars[0].refresh()

        try:
            result = run_to_end(segment_image(
                model, pixels, image_mpp=args.mpp, sampling_steps=steps, samples=samples, seed=args.seed,
                threshold=args.threshold, keep_steps=want_maps, with_attention=args.save_attention,
            ), show)
        except ImageError as exc:  # name the file: the engine only knows the pixels
            raise ImageError(f"{path}: {exc}") from exc
        finally:
            for bar in bars:
                bar.close()
        maps = {"labels": relabel_sequential_uint(result.labels), "steps": result.steps,
                "attention": result.attention, "uncertainty": result.uncertainty}
        for kind, file in outputs[path].items():
            _write_tiff(file, maps[kind])
        print(f"{path.name}: {result.n_nuclei} nuclei, mean area {result.mean_area_px():.0f} px, "
              f"{result.seconds:.1f} s -> {outputs[path]['labels']}")
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
        raise CliError(f"--json {target} exists and is not an earlier evaluate result; it is kept: "
                       "choose another file name")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model on a MoNuSeg-layout folder; print the table and write the JSON."""
    from napari_cdal.engine.data.tiles import list_tiles, load_folder
    from napari_cdal.engine.io.checkpoint import atomic_write
    from napari_cdal.engine.segment.evaluate import evaluate_tiles

    _check_runtime(args)
    _check_results_file(args.json)
    split = _read_split(args.split)
    names = split.get(args.subset) if split else None
    if split and names is None:
        raise CliError(f"split file {args.split} has no list named {args.subset!r}")
    if names is None:
        names = list_tiles(args.data_dir)
    if not names:
        where = f"the {args.subset!r} list of {args.split}" if split else f"{Path(args.data_dir) / 'images'}"
        raise CliError(f"no images to score: {where} is empty; a tile folder holds images/<id>.tif "
                       "next to masks/<id>.png")
    device = _setup_torch(args)
    model = _load_model(args.model, device)
    steps = _check_sampling_steps(model, args)
    tiles = load_folder(args.data_dir, names)
    summary = None
    with _progress(len(tiles), "evaluate", "image") as bar:
        for event in evaluate_tiles(model, tiles, image_mpp=args.mpp, sampling_steps=steps, samples=args.samples,
                                    seed=args.seed, threshold=args.threshold):
            if event.stage == "image":
                bar.update(1)
            else:
                summary = event.payload
    summary["model"] = str(model.source)
    summary["settings"] = {"sampling_steps": steps,
                           "samples": model.config.default_samples if args.samples is None else args.samples,
                           "seed": args.seed, "threshold": args.threshold, "mpp": args.mpp}
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
    from napari_cdal.engine.config import TrainConfig

    values = dict(base or {})
    if getattr(args, "train_config", None):
        values.update(_read_json_object(args.train_config, "--train-config"))
    for key in ("iterations", "batch_size", "patch_size", "seed", "checkpoint_every", "validate_every"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return TrainConfig.from_dict(values)


def _model_config(spec: str | None) -> Any:
    from napari_cdal.engine.config import PRESETS, ModelConfig

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
    from napari_cdal.engine.config import PRESETS, ModelConfig
    from napari_cdal.engine.method.model import with_new_config

    if spec in PRESETS:
        raise CliError("with --init-from, --config must be a JSON file of the config keys to change, not a preset")
    changes = _read_json_object(spec, "--config")
    config = ModelConfig.from_dict({**model.config.to_dict(), **changes})
    return with_new_config(model, config, seed)


def state_path(out: Path) -> Path:
    """Where `train` keeps its resumable state beside the model file."""
    return out.with_name(out.stem + ".state.safetensors")


def _check_train_out(out: Path, resume: bool) -> None:
    """--out is a new model file, or with --resume the one this run writes; never the bundled model."""
    from napari_cdal.engine.checks import check_output_file
    from napari_cdal.engine.method.model import is_bundled

    check_output_file(out)
    if is_bundled(out) or is_bundled(state_path(out)):
        raise CliError(f"--out {out} is inside the package's bundled weights, which are never replaced; "
                       "choose a file of your own, e.g. runs/cdal.safetensors")
    if resume:
        return
    taken = [path for path in (out, state_path(out)) if path.exists()]
    if taken:
        hint = " or pass --resume to continue the run that wrote it" if state_path(out).exists() else ""
        raise CliError(f"{taken[0]} already exists and train never replaces a file; choose a new --out{hint}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train cDAL on a MoNuSeg-layout folder; keep the best model (by validation) at --out."""
    from napari_cdal.engine.checks import check_at_least, check_patch_size
    from napari_cdal.engine.data.tiles import list_tiles, load_folder
    from napari_cdal.engine.method.model import CdalModel, save_model
    from napari_cdal.engine.training.loop import training_loop
    from napari_cdal.engine.training.run import make_patch_source, make_validation, prepare_tiles
    from napari_cdal.engine.training.state import TrainState

    _check_runtime(args)
    for option in ("batch_size", "checkpoint_every", "validate_every"):
        check_at_least(getattr(args, option), 1, "--" + option.replace("_", "-"))
    out = Path(args.out)
    _check_train_out(out, args.resume)
    split = _read_split(args.split)
    resume_from = state_path(out)
    if args.resume:
        if not resume_from.exists():
            raise CliError(f"--resume given but no training state at {resume_from}")
        device = _setup_torch(args)
        state = TrainState.load(resume_from, device)
        if args.iterations is not None:
            if args.iterations <= state.step:
                raise CliError(f"the run at {resume_from} is already at iteration {state.step}; give "
                               f"{_typed(args, '--iterations', '--steps')} more than {state.step} to go on")
            state = TrainState.load(resume_from, device, _train_config(args, state.train_config.to_dict()))
        elif state.step >= state.train_config.iterations:
            raise CliError(f"the run at {resume_from} has finished its {state.step} iterations; give "
                           f"{_typed(args, '--iterations', '--steps')} more than {state.step} to go on")
        # go on with the recorded data settings unless told otherwise, so a resumed run repeats exactly
        mpp = state.record.get("data_mpp", DEFAULT_IMAGE_MPP) if args.mpp is None else args.mpp
        train_names = split.get("train") or state.record.get("train_tiles") or list_tiles(args.data_dir)
        val_names = (split.get("validation") if split else state.record.get("validation_tiles")) or []
    else:
        mpp = DEFAULT_IMAGE_MPP if args.mpp is None else args.mpp
        train_names = split.get("train") or list_tiles(args.data_dir)
        val_names = split.get("validation") or []
        cfg = _train_config(args)
        device = _setup_torch(args)
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
    check_patch_size(state.train_config.patch_size, config)
    if not train_names:
        raise CliError(f"no training images: {Path(args.data_dir) / 'images'} is empty")
    train_tiles = prepare_tiles(load_folder(args.data_dir, train_names), mpp, config)
    val_tiles = load_folder(args.data_dir, val_names) if val_names else []
    sample_batch = make_patch_source(train_tiles, state, config)
    on_validate = make_validation(val_tiles, mpp, out) if val_tiles else None

    def on_checkpoint(s: TrainState) -> None:
        s.save(resume_from)
        if not val_tiles:
            save_model(out, s.exported_model())

    bar = _progress(state.train_config.iterations, "train", "iteration")
    bar.n = state.step
    for event in training_loop(state, sample_batch, device, on_checkpoint, on_validate):
        if event.stage == "train":
            bar.n = event.index
            bar.set_postfix({k: f"{v:.3f}" for k, v in event.payload.items() if k in ("mse", "dice", "d")})
        elif event.stage == "validate_done":
            bar.write(f"step {state.step}: validation " + ", ".join(
                f"{k} {v:.3f}" for k, v in event.payload.items() if isinstance(v, float)))
    bar.close()
    print(f"trained {state.step} iterations in {state.record['wall_seconds'] / 60:.1f} min; model: {out}")
    return 0


def _read_mask(path: Path) -> Any:
    """A label image from a file; a grey image saved as RGB(A) becomes its one channel."""
    from napari_cdal.engine.io.images import read_image

    mask = read_image(path)
    if mask.ndim == 3 and all((mask[..., c] == mask[..., 0]).all() for c in range(1, min(mask.shape[-1], 3))):
        mask = mask[..., 0]
    return mask


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a model on images with corrected masks; write the new model at --out, never over a file."""
    import math

    from napari_cdal.engine.checks import check_output_file
    from napari_cdal.engine.io.images import read_header, read_image
    from napari_cdal.engine.method.model import is_bundled
    from napari_cdal.engine.training.corrections import FinetunePair
    from napari_cdal.engine.training.finetune import (
        finetune,
        finetune_config,
        save_finetuned,
        suggest_new_name,
    )

    _check_runtime(args)
    if args.lr is not None and not (math.isfinite(args.lr) and 0 < args.lr <= 1):
        raise CliError(f"--lr {args.lr} must be a learning rate in (0, 1]; the default is 0.0001")
    images, masks = [Path(p) for p in args.images], [Path(p) for p in args.masks]
    if len(images) != len(masks):
        raise CliError(f"got {len(images)} images but {len(masks)} --masks; give one mask per image, in the same order")
    out = check_output_file(args.out)
    if is_bundled(out):
        raise CliError(f"--out {out} is inside the package's bundled weights, which are never replaced; "
                       "choose a file of your own, e.g. cdal_finetuned.safetensors")
    if out.exists():
        raise CliError(f"--out {out} already exists and fine-tuning never replaces a file; "
                       f"choose a new name, e.g. {suggest_new_name(out)}")
    for path in images + masks:
        read_header(path)
    pairs = [FinetunePair(read_image(image), _read_mask(mask), None, f"{image.name} with {mask.name}")
             for image, mask in zip(images, masks, strict=True)]
    overrides = {key: getattr(args, key) for key in ("iterations", "seed") if getattr(args, key) is not None}
    if args.lr is not None:
        overrides.update(lr_g=args.lr, lr_d=args.lr * FINETUNE_D_LR_RATIO)
    settings = finetune_config(**overrides)
    device = _setup_torch(args)
    model = _load_model(args.model, device)
    bars: list[Any] = []  # opened at the first step, so rejected input leaves only the error line
    result = None
    try:
        for event in finetune(model, pairs, settings, device, args.mpp):
            if event.stage == "note":
                print(f"note: {event.payload}", file=sys.stderr)
            elif event.stage == "train":
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
    print(f"fine-tuned {result.record['steps']} iterations on {len(pairs)} image(s) in "
          f"{result.record['wall_seconds']:.0f} s; model: {out} (source {model.source} unchanged)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's config and training record."""
    import torch

    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.io.checkpoint import read_metadata
    from napari_cdal.engine.method.model import bundled_model_path

    path = Path(args.model) if args.model else bundled_model_path()
    meta = read_metadata(path)
    record = meta.get("record", {})
    print(f"model: {path}{' (bundled)' if not args.model else ''}")
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
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="where to compute: auto (a CUDA GPU when there is one, else the CPU), cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch may use (default: torch's choice, usually all cores)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model file (.safetensors) to use (default: the bundled model)")
    p.add_argument("--sampling-steps", "--steps", dest="sampling_steps", type=int, default=None,
                   help="denoising steps the mask forms in, at most the model's diffusion steps T; fewer is "
                        "faster (default: the model's own choice; the bundled model: 2)")
    p.add_argument("--samples", type=int, default=None,
                   help="how many masks to draw and average (K), each from another random latent code; 2 or "
                        "more also give an uncertainty map, where they disagree (default: the model's; bundled: 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats a run exactly (default: 0)")
    p.add_argument("--mpp", type=float, default=DEFAULT_IMAGE_MPP,
                   help=f"the image's µm per pixel (default: {DEFAULT_IMAGE_MPP}, a 40x tile; 0.5 for 20x)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"how sure the model must be that a pixel is nucleus, 0 to 1 (default: {DEFAULT_THRESHOLD})")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job; former flag names stay as aliases."""
    from napari_cdal import __version__

    parser = argparse.ArgumentParser(prog="napari-cdal", description="Nuclei segmentation of H&E tiles with cDAL.")
    parser.add_argument("--version", action="version", version=f"napari-cdal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images into nuclei: one id per nucleus",
                       description="Segment each image; write <stem>_labels.tif (0 = background, one id per "
                                   "nucleus) and, when asked, the maps behind it into --out.")
    p.add_argument("images", nargs="*", help="image files (TIFF, PNG, JPEG)")
    p.add_argument("--sample", action="store_true", help="also segment the bundled MoNuSeg sample tile")
    p.add_argument("--out", required=True, help="output folder (made if missing)")
    _add_sampling(p)
    p.add_argument("--save-steps", action="store_true",
                   help="also write <stem>_steps.tif: the model's estimate of the mask after each denoising step")
    p.add_argument("--save-attention", action="store_true",
                   help="also write <stem>_attention.tif: where the discriminator looked, per step")
    p.add_argument("--save-uncertainty", action="store_true",
                   help="also write <stem>_uncertainty.tif: where the K samples disagree (needs --samples 2+)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist already (default: refuse, and write nothing)")
    _add_runtime(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="score a model on a folder with ground truth (Dice, IoU, AJI, PQ)")
    p.add_argument("data_dir", help="folder with images/<id>.tif and masks/<id>.png (MoNuSeg layout)")
    _add_sampling(p)
    p.add_argument("--json", default=None,
                   help="write the results as JSON here (replaces only an earlier evaluate result)")
    p.add_argument("--split", default=None, help="JSON file of tile-name lists; score only one of them")
    p.add_argument("--subset", default="validation", help="which list of --split to score (default: validation)")
    _add_runtime(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model on a MoNuSeg-layout folder")
    p.add_argument("data_dir", help="folder with images/ and masks/ (MoNuSeg layout)")
    p.add_argument("--out", required=True,
                   help="new model file to write (.safetensors); an existing one only with --resume")
    p.add_argument("--iterations", "--steps", dest="iterations", type=int, default=None,
                   help="training iterations in all, each one batch of patches (default: 4000)")
    p.add_argument("--resume", action="store_true",
                   help="go on with the run that wrote --out, from its saved state <out>.state.safetensors")
    p.add_argument("--config", default=None,
                   help="model size preset (tiny, small, medium, large) or a JSON file of model settings; with "
                        "--init-from, a JSON file of the settings to change (e.g. {\"self_condition\": true})")
    p.add_argument("--train-config", default=None,
                   help='JSON file of training settings to change (e.g. {"adversarial_weight": 0.3})')
    p.add_argument("--init-from", default=None,
                   help="start a new run from this model's weights (not its optimiser state)")
    p.add_argument("--split", default=None, help="JSON with 'train' and 'validation' tile-name lists")
    p.add_argument("--mpp", type=float, default=None,
                   help=f"µm per pixel of the data (default: {DEFAULT_IMAGE_MPP}; with --resume, the recorded one)")
    p.add_argument("--batch-size", type=int, default=None, help="patches per iteration (default: 4)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="side of a training patch in model pixels, a multiple of the model's size multiple "
                        "(default: 256)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the run (default: 0)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="save the resumable state every N iterations (default: 200)")
    p.add_argument("--validate-every", type=int, default=None,
                   help="score the validation tiles every N iterations and keep the best model (default: 500)")
    _add_runtime(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a model on images with corrected masks")
    p.add_argument("images", nargs="+", help="image files (TIFF, PNG, JPEG)")
    p.add_argument("--masks", nargs="+", required=True,
                   help="one corrected mask per image, same size: instance ids or binary (0 = background)")
    p.add_argument("--model", default=None, help="model to start from (.safetensors); default: the bundled model")
    p.add_argument("--out", required=True, help="new model file to write (.safetensors); never replaces a file")
    p.add_argument("--iterations", "--steps", dest="iterations", type=int, default=None,
                   help=f"training iterations (default: {FINETUNE_SETTINGS['iterations']})")
    p.add_argument("--mpp", type=float, default=DEFAULT_IMAGE_MPP,
                   help=f"the images' µm per pixel (default: {DEFAULT_IMAGE_MPP}, a 40x tile; 0.5 for 20x)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"generator learning rate; the discriminator gets {FINETUNE_D_LR_RATIO:g} of it "
                        f"(default: {FINETUNE_SETTINGS['lr_g']:g})")
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed repeats a run (default: 0)")
    _add_runtime(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("info", help="print a model's settings and training record")
    p.add_argument("--model", default=None, help="model file; default: the bundled model")
    p.add_argument("--json", action="store_true", help="also print the whole metadata as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("view", help="open napari with the Segment widget docked")
    p.add_argument("images", nargs="*", help="image files to open")
    p.add_argument("--sample", action="store_true", help="also open the bundled MoNuSeg sample tile")
    p.set_defaults(func=cmd_view)
    return parser


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (a library's multi-line text joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn known errors into one line on stderr and exit status 1."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.typed_options = [token.split("=", 1)[0] for token in argv if token.startswith("--")]
    try:
        return args.func(args)
    except (CliError, FileNotFoundError, ValueError) as exc:  # every engine error is a ValueError subclass
        print(f"napari-cdal {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a read or write the checks could not foresee (a disk filling up meanwhile)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"napari-cdal {args.command}: error: {where}{exc.strerror or exc}; files already written are "
              "complete", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"napari-cdal {args.command}: error: out of memory; crop the image into smaller tiles, or give "
              "fewer --samples or no --save-steps/--save-attention", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"napari-cdal {args.command}: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
