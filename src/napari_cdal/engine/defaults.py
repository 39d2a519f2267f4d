"""The defaults a user meets, in one place: pixel size, threshold, devices (no torch, so the CLI's help stays quick)."""

from __future__ import annotations

from typing import Any

DEFAULT_IMAGE_MPP = 0.25
"""µm per pixel assumed for an image that does not say: a 40x H&E tile (MoNuSeg's)."""

MPP_RANGE = (0.05, 5.0)
"""µm per pixel an image may declare: from a 200x scan (0.05) to a 2x overview (5)."""

SEED_RANGE = (0, 2**64 - 1)
"""The seeds a run takes: what torch's and numpy's generators accept (64 bits, not negative)."""

SEED_RANGE_TEXT = "0 and 2**64-1"
"""SEED_RANGE as an error message says it."""

MAX_COUNT = 2**31 - 1
"""The largest count an option or setting may give (iterations, batch size, review items...): a C int."""

MAX_PARALLEL = 1024
"""The most CPU threads (--threads) or worker processes (--workers) a run may ask for."""

DEFAULT_THRESHOLD = 0.5
"""Foreground probability above which a pixel belongs to a nucleus (benchmarks/accuracy.py --thresholds)."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Where to compute: auto takes a CUDA GPU when torch sees one, else the CPU."""

RUNTIME_CHOICES = ("auto", "torch", "openvino")
"""Where sampling runs the generator: auto takes OpenVINO on a CPU where it is installed (benchmarks/peer_speed.py:
about 2x torch's speed on a bf16 CPU), else torch; torch is the reference."""

DEFAULT_RUNTIME = "auto"
"""The runtime the CLI's segment and evaluate (slides too) sample with; the widget samples in torch, whose passes a
Cancel can stop, and training and fine-tuning always use torch."""

PRECISION_CHOICES = ("auto", "float32", "bfloat16")
"""The arithmetic of sampling's network passes: auto is bfloat16 where it was measured to keep Dice within 0.002
of float32 and the hardware computes it natively (OpenVINO on a CPU with bf16, a CUDA GPU), else float32."""

DEFAULT_PRECISION = "auto"
"""The precision segment, evaluate, slides and the widget sample with (see PRECISION_CHOICES)."""

FAST_SETTINGS: dict[str, int] = {"sampling_steps": 1, "samples": 1}
"""What --fast (slides and batches) samples with: one step and one sample, so no uncertainty map. On the validation
tiles (`napari-cdal evaluate --fast --split benchmarks/monuseg_split.json`) it scored Dice 0.807 / AJI 0.603
against the defaults' 0.809 / 0.599, in less than half the time per tile (benchmarks/peer_speed.py)."""

AUGMENT_SAMPLES = True
"""Each of the K samples of a tile sees it in another view (flipped or turned, engine/method/symmetry.py) and is
turned back before they are averaged: the cost of K samples, more diverse. benchmarks/augment.py at K = 2, plain
against augmented: training tiles Dice 0.839 / 0.841, AJI 0.615 / 0.616, PQ 0.588 / 0.590; validation tiles Dice
0.809 / 0.810, AJI 0.599 / 0.600, PQ 0.561 / 0.568. The uncertainty ranks wrong nuclei a little less well on
validation (per-nucleus AUROC 0.805 / 0.796), as well on the training tiles (0.776 / 0.775)."""

TISSUE_CHOICES = ("auto", "all")
"""Which blocks of a slide are segmented: auto, those with tissue (found on a low-resolution view); all, every one."""

DEFAULT_TISSUE = "auto"
"""A slide's glass is skipped unless asked otherwise: a typical slide is more than half glass."""

DEFAULT_VOLUME_MODEL = "cdal_hippocampus"
"""The bundled model a volume (.nii/.nii.gz) is segmented or scored with when no --model is given."""

MIN_REGION_UM = 8.0
"""Smallest side of a corrected region, in µm (about one nucleus): a smaller drawn box is refused, a review
item's box is grown to it."""

REGION_MARGIN_UM = 4.0
"""Margin round a Review item when its box becomes a corrected region (the widget's checked regions,
`finetune --regions` of a review CSV): the nucleus's border, its neighbours and some background are
learned from too. benchmarks/loop.py, 25 Review items on breast: 4 µm gained +0.023 and +0.026 AJI
on unseen tissue (two fine-tune seeds) where 2 µm gained +0.015, and 6 µm no more than 4 µm."""

FINETUNE_D_LR_RATIO = 0.5
"""The discriminator's learning rate as a share of the generator's when fine-tuning."""

FINETUNE_SETTINGS: dict[str, Any] = {
    "iterations": 150,
    "batch_size": 4,
    "patch_size": 128,
    "lr_g": 1e-4,
    "lr_d": 1e-4 * FINETUNE_D_LR_RATIO,
    "lr_min": 1e-6,
    "warmup_steps": 10,
    "ema_decay": 0.99,
    "holdout_fraction": 0.25,
    "validate_every": 50,
    "patience": 2,
}
"""How fine-tuning differs from training from scratch; chosen by AJI gained per minute with benchmarks/loop.py
(25 Review items on a breast tile, scored on another; the model card's sweep) on a 2-core CPU: 2e-4 or 300
iterations gained less, nothing held back (the last weights) lost AJI. Replay (replay_share) stays 0: measured,
it did not lower forgetting."""

DEFAULT_SEED = 0
"""The seed a run starts from when none is given (the Segment widget's field starts at it): the same seed repeats a
run exactly."""

REVIEW_COUNT = 10
"""How many of the likely errors the Segment widget's Review steps through until the user asks for more or fewer."""
