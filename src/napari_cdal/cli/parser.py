"""The command line's options, in plain words; former flag names stay as aliases."""

from __future__ import annotations

import argparse

from napari_cdal.cli.evaluate import cmd_evaluate
from napari_cdal.cli.finetune import cmd_finetune
from napari_cdal.cli.help_defaults import BUNDLED_SAMPLES, BUNDLED_SAMPLING_STEPS, sub_parser
from napari_cdal.cli.info import cmd_info, cmd_view
from napari_cdal.cli.segment import cmd_segment
from napari_cdal.cli.train import cmd_train
from napari_cdal.engine.config import FINETUNE_CONFIG, TRAIN_DEFAULTS
from napari_cdal.engine.defaults import (
    DEFAULT_IMAGE_MPP,
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    DEFAULT_TISSUE,
    DEVICE_CHOICES,
    FAST_SETTINGS,
    FINETUNE_D_LR_RATIO,
    PRECISION_CHOICES,
    RUNTIME_CHOICES,
    TISSUE_CHOICES,
)


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICE_CHOICES,
        help="where to compute: auto (a CUDA GPU when there is one, else the CPU), cpu or cuda",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads torch may use (default: torch's choice, usually all cores)",
    )


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="model file (.safetensors) or bundled model name (napari-cdal info --list), e.g. "
        "cdal_hippocampus (default: cdal_monuseg, the bundled H&E model; for volumes cdal_hippocampus)",
    )
    p.add_argument(
        "--sampling-steps",
        "--steps",
        dest="sampling_steps",
        type=int,
        default=None,
        help="denoising steps the mask forms in, at most the model's diffusion steps T; fewer is "
        f"faster (default: the model's own choice; the bundled model: {BUNDLED_SAMPLING_STEPS})",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="how many masks to draw and average (K), each from another random latent code; 2 or "
        f"more also give an uncertainty map, where they disagree (default: the model's; bundled: {BUNDLED_SAMPLES})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"random seed; the same seed repeats a run exactly (default: {DEFAULT_SEED})",
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=DEFAULT_IMAGE_MPP,
        help=f"the image's µm per pixel (default: {DEFAULT_IMAGE_MPP}, a 40x tile; 0.5 for 20x)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"how sure the model must be that a pixel is nucleus, 0 to 1 (default: {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"for slides and batches: {FAST_SETTINGS['sampling_steps']} step and "
        f"{FAST_SETTINGS['samples']} sample unless --sampling-steps or --samples say otherwise "
        "(about 3x faster; no uncertainty map; on validation tiles Dice 0.807 against 0.809)",
    )
    p.add_argument(
        "--runtime",
        default=DEFAULT_RUNTIME,
        choices=RUNTIME_CHOICES,
        help=f"what runs the network while sampling: auto (OpenVINO on a CPU where it is installed, "
        f"else torch), torch or openvino (default: {DEFAULT_RUNTIME})",
    )
    p.add_argument(
        "--precision",
        default=DEFAULT_PRECISION,
        choices=PRECISION_CHOICES,
        help="arithmetic of the network while sampling: auto (bfloat16 where the CPU or GPU computes "
        f"it natively, else float32), float32 or bfloat16 (default: {DEFAULT_PRECISION})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job; former flag names stay as aliases."""
    from napari_cdal import __version__

    parser = argparse.ArgumentParser(prog="napari-cdal", description="Nuclei segmentation of H&E tiles with cDAL.")
    parser.add_argument("--version", action="version", version=f"napari-cdal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub_parser(
        sub,
        "segment",
        help="segment images into nuclei: one id per nucleus",
        description="Segment each image; write <stem>_labels.tif (0 = background, one id per "
        "nucleus) and, when asked, the maps behind it into --out.",
    )
    p.add_argument(
        "images",
        nargs="*",
        help="image files (TIFF, PNG, JPEG, slides), or NIfTI volumes (.nii/.nii.gz) with a volume "
        "model such as --model cdal_hippocampus: they give <stem>_labels.nii.gz",
    )
    p.add_argument("--sample", action="store_true", help="also segment the bundled MoNuSeg sample tile")
    p.add_argument("--out", required=True, help="output folder (made if missing)")
    _add_sampling(p)
    p.add_argument(
        "--save-steps",
        action="store_true",
        help="also write <stem>_steps.tif, the model's estimate of the mask (x̂0) after each denoising "
        "step, and <stem>_chain.tif, the chain as sampled from the noise x_T to x_0 (one plane more)",
    )
    p.add_argument(
        "--save-attention",
        action="store_true",
        help="also write <stem>_attention.tif: where the discriminator looked, per step",
    )
    p.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <stem>_uncertainty.tif: where the K samples disagree (needs --samples 2+)",
    )
    p.add_argument(
        "--geojson",
        action="store_true",
        help="also write <stem>_nuclei.geojson: each nucleus as a QuPath detection (polygon in "
        "pixels, with its measurements), ids as in the labels",
    )
    p.add_argument(
        "--measurements",
        action="store_true",
        help="also write <stem>_nuclei.csv: one row per nucleus (centroid, area, perimeter, "
        "shape, haematoxylin density, uncertainty)",
    )
    p.add_argument(
        "--review",
        type=int,
        default=None,
        metavar="N",
        help="also write <stem>_review.csv: the first N places Review would show, likeliest errors "
        "first (doubtful nuclei, merges, missed nuclei): rank, kind, id, y, x, area_um2, score; "
        "not for slides or volumes",
    )
    p.add_argument(
        "--slide",
        action="store_true",
        help="segment every image as a whole slide: block by block with bounded memory, labels in a "
        "resumable <stem>_labels.zarr (default: only .svs/.ndpi and images of 4096 x 4096 or more)",
    )
    p.add_argument(
        "--tissue",
        default=DEFAULT_TISSUE,
        choices=TISSUE_CHOICES,
        help="which blocks of a slide to segment: auto, only those with tissue (found on a low-resolution "
        "view; the mask is written as <stem>_tissue.png), or all, glass too "
        f"(default: {DEFAULT_TISSUE})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="segment slides on a local Dask cluster of N worker processes (implies --slide)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="segment slides on a running Dask cluster, e.g. tcp://host:8786 (implies --slide); its "
        "workers must see the model and slide files at the same paths",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist already, and start a slide's <stem>_labels.zarr afresh "
        "(default: refuse, and write nothing; an existing store is resumed)",
    )
    _add_runtime(p)
    p.set_defaults(func=cmd_segment)

    p = sub_parser(
        sub,
        "evaluate",
        help="score a model on a folder with ground truth (Dice, IoU, AJI, PQ; for volumes Dice and IoU per class)",
    )
    p.add_argument(
        "data_dir",
        help="folder with images/<id>.tif and masks/<id>.png (MoNuSeg layout), or "
        "images/<id>.nii.gz and labels/<id>.nii.gz (volumes)",
    )
    _add_sampling(p)
    p.add_argument(
        "--json", default=None, help="write the results as JSON here (replaces only an earlier evaluate result)"
    )
    p.add_argument("--split", default=None, help="JSON file of tile-name lists; score only one of them")
    p.add_argument("--subset", default="validation", help="which list of --split to score (default: validation)")
    _add_runtime(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub_parser(sub, "train", help="train a model on a MoNuSeg-layout folder or a folder of NIfTI volumes")
    p.add_argument(
        "data_dir",
        help="folder with images/ and masks/ (MoNuSeg layout), or images/*.nii.gz with "
        "labels/*.nii.gz (volumes of classes: use --config hippocampus or your own)",
    )
    p.add_argument(
        "--out", required=True, help="new model file to write (.safetensors); an existing one only with --resume"
    )
    p.add_argument(
        "--iterations",
        "--steps",
        dest="iterations",
        type=int,
        default=None,
        help=f"training iterations in all, each one batch of patches (default: {TRAIN_DEFAULTS.iterations})",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run that wrote --out, from its saved state <out>.state.safetensors",
    )
    p.add_argument(
        "--config",
        default=None,
        help="model preset (tiny, small, medium, large for H&E; hippocampus for volumes of classes) "
        "or a JSON file of model settings; with "
        '--init-from, a JSON file of the settings to change (e.g. {"self_condition": true})',
    )
    p.add_argument(
        "--train-config",
        default=None,
        help='JSON file of training settings to change (e.g. {"adversarial_weight": 0.3})',
    )
    p.add_argument(
        "--init-from", default=None, help="start a new run from this model's weights (not its optimiser state)"
    )
    p.add_argument(
        "--discriminator-only",
        action="store_true",
        help="keep --init-from's generator network (G) as it is and train it a new pixel discriminator, which "
        "learns where that G's masks are wrong (the attention layer and Review then use it); "
        "--iterations and --seed apply, --train-config takes its own settings "
        "(engine/training/error_disc.ErrorDiscSettings)",
    )
    p.add_argument("--split", default=None, help="JSON with 'train' and 'validation' lists of tile or volume names")
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help=f"µm per pixel of the data (default: {DEFAULT_IMAGE_MPP}; with --resume, the recorded one)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help=f"patches per iteration (default: {TRAIN_DEFAULTS.batch_size})"
    )
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="side of a training patch in model pixels, a multiple of the model's size multiple "
        f"(default: {TRAIN_DEFAULTS.patch_size})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"random seed of the run (default: {TRAIN_DEFAULTS.seed})")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help=f"save the resumable state every N iterations (default: {TRAIN_DEFAULTS.checkpoint_every})",
    )
    p.add_argument(
        "--validate-every",
        type=int,
        default=None,
        help="score the validation tiles every N iterations and keep the best model "
        f"(default: {TRAIN_DEFAULTS.validate_every})",
    )
    _add_runtime(p)
    p.set_defaults(func=cmd_train)

    p = sub_parser(sub, "finetune", help="fine-tune a model on images with corrected masks")
    p.add_argument("images", nargs="+", help="image files (TIFF, PNG, JPEG)")
    p.add_argument(
        "--masks",
        nargs="+",
        required=True,
        help="one corrected mask per image, same size: instance ids or binary (0 = background)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model to start from (.safetensors, or a bundled name); default: the bundled H&E model",
    )
    p.add_argument(
        "--regions",
        nargs="+",
        default=None,
        help="the corrected regions, one file per image in the same order: a mask image of the image's "
        "size (non-zero = corrected) or a GeoJSON of polygons or rectangles (QuPath's export); "
        "each part's bounding box is learned from, as the widget's rectangles are, and nothing "
        "outside (default: the whole mask is taken as checked)",
    )
    p.add_argument("--out", required=True, help="new model file to write (.safetensors); never replaces a file")
    p.add_argument(
        "--iterations",
        "--steps",
        dest="iterations",
        type=int,
        default=None,
        help=f"training iterations (default: {FINETUNE_CONFIG.iterations})",
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=DEFAULT_IMAGE_MPP,
        help=f"the images' µm per pixel (default: {DEFAULT_IMAGE_MPP}, a 40x tile; 0.5 for 20x)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate of G, the generator network; the discriminator gets {FINETUNE_D_LR_RATIO:g} of it "
        f"(default: {FINETUNE_CONFIG.lr_g:g})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"random seed; the same seed repeats a run (default: {FINETUNE_CONFIG.seed})",
    )
    _add_runtime(p)
    p.set_defaults(func=cmd_finetune)

    p = sub_parser(sub, "info", help="print a model's settings and training record, or list the models")
    p.add_argument("--model", default=None, help="model file or bundled name; default: the bundled H&E model")
    p.add_argument("--list", action="store_true", help="list the bundled models (by name) and your own")
    p.add_argument("--json", action="store_true", help="also print the whole metadata as JSON")
    p.set_defaults(func=cmd_info)

    p = sub_parser(sub, "view", help="open napari with the Segment widget docked")
    p.add_argument("images", nargs="*", help="image files to open")
    p.add_argument("--sample", action="store_true", help="also open the bundled MoNuSeg sample tile")
    p.set_defaults(func=cmd_view)
    return parser
