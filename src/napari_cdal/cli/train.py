"""`napari-cdal train`: a new run, or one resumed, on a MoNuSeg-layout folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_cdal.catalog import state_path
from napari_cdal.cli import common
from napari_cdal.cli.common import CliError


def _train_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    from napari_cdal.engine.config import TrainConfig

    values = dict(base or {})
    if getattr(args, "train_config", None):
        values.update(common.read_json_object(args.train_config, "--train-config"))
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
    changes = common.read_json_object(spec, "--config")
    config = ModelConfig.from_dict({**model.config.to_dict(), **changes})
    return with_new_config(model, config, seed)


def _check_train_out(out: Path, resume: bool) -> None:
    """--out is a new model file, or with --resume the one this run writes; never the bundled model."""
    from napari_cdal.engine.checks import check_output_file
    from napari_cdal.engine.method.model import is_bundled

    check_output_file(out)
    if is_bundled(out) or is_bundled(state_path(out)):
        raise CliError(
            f"--out {out} is inside the package's bundled weights, which are never replaced; "
            "choose a file of your own, e.g. runs/cdal.safetensors"
        )
    if resume:
        return
    taken = [path for path in (out, state_path(out)) if path.exists()]
    if taken:
        hint = " or pass --resume to continue the run that wrote it" if state_path(out).exists() else ""
        raise CliError(f"{taken[0]} already exists and train never replaces a file; choose a new --out{hint}")


def _train_discriminator_only(args: argparse.Namespace, out: Path, split: dict[str, list[str]]) -> int:
    """--discriminator-only: a pixel D for --init-from's frozen G, written to --out."""
    import dataclasses

    from napari_cdal.engine.data.tiles import check_image_channels, check_tiles_have_nuclei, load_folder
    from napari_cdal.engine.method.model import CdalModel, save_model
    from napari_cdal.engine.training.error_disc import ErrorDiscSettings, train_error_discriminator
    from napari_cdal.engine.training.run import prepare_tiles, run_data

    if not args.init_from:
        raise CliError(
            "--discriminator-only trains a discriminator for a generator network: give the model with --init-from"
        )
    refused = [
        option
        for option in ("--resume", "--config", "--batch-size", "--patch-size", "--checkpoint-every", "--validate-every")
        if option in args.typed_options
    ]
    if refused:
        raise CliError(f"{refused[0]} does not apply to --discriminator-only (the generator network is kept as it is)")
    device = common.setup_torch(args)
    model = common.load_model(args.init_from, device)
    if model.config.is_multiclass or model.config.image_channels != 3:
        raise CliError("--discriminator-only is for H&E nucleus models; this model segments classes or grayscale")
    data = run_data(args.data_dir, split, None, args.mpp)
    check_image_channels(args.data_dir, data.train_names, 3)
    train_tiles = load_folder(args.data_dir, data.train_names)
    check_tiles_have_nuclei(args.data_dir, train_tiles)
    changes = common.read_json_object(args.train_config, "--train-config") if args.train_config else {}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(ErrorDiscSettings)})
    if unknown:
        raise CliError(
            f"--train-config: {', '.join(unknown)} is no setting of the discriminator's training; it has "
            f"{', '.join(f.name for f in dataclasses.fields(ErrorDiscSettings))}"
        )
    settings = dataclasses.replace(ErrorDiscSettings(), **changes)
    changes = {key: value for key, value in (("iterations", args.iterations), ("seed", args.seed)) if value is not None}
    settings = dataclasses.replace(settings, **changes)
    if settings.iterations < 1:
        raise CliError(f"{common.typed(args, '--iterations', '--steps')} must be at least 1, got {settings.iterations}")
    tiles = prepare_tiles(train_tiles, data.data_mpp, model.config)
    bar = common.progress(settings.pool_batches, "segment patches", "batch")
    done: CdalModel | None = None
    for event in train_error_discriminator(model, tiles, settings):
        if event.stage == "pool":
            common.advance(bar, event.index)
            if event.index == settings.pool_batches:  # the pool is made: training starts at 0
                bar.close()
                bar = common.progress(settings.iterations, "train D", "iteration")
        elif event.stage == "train":
            bar.set_postfix({k: f"{v:.3f}" for k, v in event.payload.items()}, refresh=False)
            common.advance(bar, event.index)
        elif event.stage == "done":
            done = event.payload
    bar.close()
    trained = common.finished(done, "training the pixel discriminator")
    save_model(out, trained, replace=False)
    record = trained.record["error_discriminator"]
    print(
        f"trained the pixel discriminator {settings.iterations} iterations on {record['patches']} patches in "
        f"{record['wall_seconds'] / 60:.1f} min; model: {out}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train cDAL on a MoNuSeg-layout folder; keep the best model (by validation) at --out."""
    from napari_cdal.engine.checks import check_at_least
    from napari_cdal.engine.io.lock import output_lock

    common.check_runtime(args)
    for option in ("batch_size", "patch_size", "checkpoint_every", "validate_every"):
        check_at_least(getattr(args, option), 1, "--" + option.replace("_", "-"))
    out = Path(args.out)
    _check_train_out(out, args.resume)
    split = common.read_split(args.split)
    with output_lock(out):  # one run at a time writes --out and its state
        _check_train_out(out, args.resume)  # again: a run that held the lock may have written it meanwhile
        if args.discriminator_only:
            return _train_discriminator_only(args, out, split)
        return _train(args, out, split)


def _train(args: argparse.Namespace, out: Path, split: dict[str, list[str]]) -> int:
    """A new or resumed run to --out, its options checked and --out locked."""
    from napari_cdal.engine.method.model import CdalModel
    from napari_cdal.engine.training.run import new_state, run_data, train_run
    from napari_cdal.engine.training.state import TrainState

    if args.resume:
        ignored = [option for option in ("--config", "--init-from") if option in args.typed_options]
        if ignored:
            raise CliError(
                f"{' and '.join(ignored)} cannot change a run that goes on with --resume; start a new "
                "run with another --out"
            )
        if not state_path(out).exists():
            raise CliError(f"--resume given but no training state at {state_path(out)}")
        device = common.setup_torch(args)
        state = TrainState.load(state_path(out), device)
        wanted = state.train_config.iterations if args.iterations is None else args.iterations
        if wanted <= state.step:
            done = "is already at iteration" if args.iterations is not None else "has finished its"
            unit = "" if args.iterations is not None else " iterations"
            raise CliError(
                f"the run at {state_path(out)} {done} {state.step}{unit}; give "
                f"{common.typed(args, '--iterations', '--steps')} more than {state.step} to go on"
            )
        changes = (
            "--iterations",
            "--steps",
            "--batch-size",
            "--patch-size",
            "--seed",
            "--checkpoint-every",
            "--validate-every",
            "--train-config",
        )
        if any(option in args.typed_options for option in changes):  # told to change how the run goes on
            state = TrainState.load(state_path(out), device, _train_config(args, state.train_config.to_dict()))
        data = run_data(args.data_dir, split, state.record, args.mpp)
    else:
        data = run_data(args.data_dir, split, None, args.mpp)
        config = _train_config(args)
        device = common.setup_torch(args)
        if args.init_from:
            model = common.load_model(args.init_from, device)
            if args.config:
                model = _adapted_model(model, args.config, config.seed).to(device)
        else:
            model = CdalModel.initialise(_model_config(args.config), config.seed).to(device)
        state = new_state(model, config, args.data_dir, data, device, args.init_from)
    events = train_run(state, args.data_dir, data, out, device)
    bar = common.progress(state.train_config.iterations, "train", "iteration")
    bar.update(state.step)  # a resumed run starts where it stopped
    for event in events:
        if event.stage == "train":
            bar.set_postfix(
                {k: f"{v:.3f}" for k, v in event.payload.items() if k in ("mse", "dice", "d")}, refresh=False
            )
            common.advance(bar, event.index)
        elif event.stage == "validate_done":
            bar.write(
                f"iteration {state.step}: validation "
                + ", ".join(f"{k} {v:.3f}" for k, v in event.payload.items() if isinstance(v, float))
            )
    bar.close()
    print(f"trained {state.step} iterations in {state.record['wall_seconds'] / 60:.1f} min; model: {out}")
    return 0
