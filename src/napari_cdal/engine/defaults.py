"""The defaults a user meets, in one place: pixel size, threshold, devices (no torch, so the CLI's help stays quick)."""

from __future__ import annotations

from typing import Any

from napari_cdal.engine.config import FINETUNE_CHANGES, FINETUNE_CONFIG
from napari_cdal.engine.config import FINETUNE_D_LR_RATIO as FINETUNE_D_LR_RATIO
from napari_cdal.engine.config_rules import MAX_COUNT as MAX_COUNT
from napari_cdal.engine.config_rules import SEED_RANGE as SEED_RANGE

DEFAULT_IMAGE_MPP = 0.25
"""µm per pixel assumed for an image that does not say: a 40x H&E tile (MoNuSeg's)."""

MPP_RANGE = (0.05, 5.0)
"""µm per pixel an image may declare: from a 200x scan (0.05) to a 2x overview (5)."""

SEED_RANGE_TEXT = "0 and 2**64-1"
"""SEED_RANGE as an error message says it."""

MAX_PARALLEL = 1024
"""The most CPU threads (--threads) or worker processes (--workers) a run may ask for."""

DEFAULT_THRESHOLD = 0.5
"""Foreground probability above which a pixel belongs to a nucleus (benchmarks/accuracy.py --thresholds)."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Where to compute: auto takes a CUDA GPU when torch sees one, else the CPU."""

RUNTIME_CHOICES = ("auto", "torch", "openvino")
"""Where sampling runs G, the generator network: auto takes OpenVINO on a CPU where it is installed
(benchmarks/peer_speed.py: about 2x torch's speed on a bf16 CPU), else torch; torch is the reference."""

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

FINETUNE_SETTINGS: dict[str, Any] = {key: getattr(FINETUNE_CONFIG, key) for key in FINETUNE_CHANGES}
"""Former form of fine-tuning's settings, kept for scripts: the keys fine-tuning sets of the TrainConfig value
config.FINETUNE_CONFIG, where they live (with FINETUNE_D_LR_RATIO, the bounds MAX_COUNT and SEED_RANGE in
config_rules.py)."""


MIN_NUCLEUS_AREA_UM2 = 3.0
"""The instance step (segment/image.probability_to_labels) and its sizes, in µm: the smallest nucleus kept."""
MARKER_SPACING_UM = 2.0
"""Least distance between two watershed markers found on the distance map (the binary-only models), in µm."""
MAX_HOLE_AREA_UM2 = 4.0
"""Holes inside a nucleus up to this area (µm²) are filled."""
MIN_CORE_AREA_UM2 = 0.0
"""Smallest core blob (µm²) that seeds a nucleus of its own (0: every one)."""
CORE_THRESHOLD = 0.5
"""Core probability above which a pixel belongs to a nucleus's core, the watershed's marker."""
SMALL_NUCLEUS_UM2 = 10.0
"""A nucleus smaller than this (µm²) is kept only if the model is sure of it (SMALL_NUCLEUS_FLOOR). On the validation
tiles fewer than half of the predicted nuclei under 10 µm² match a true one (7 % under 5 µm², 35 % at 5-10), and
more than half from 10 µm² up (56 % at 10-15, 78 % at 15-20): benchmarks/sizes.py."""
SMALL_NUCLEUS_FLOOR = 0.7
"""Mean foreground probability a nucleus under SMALL_NUCLEUS_UM2 needs. benchmarks/sizes.py, without the rule and with
it: PQ 0.590 / 0.593 on the training tiles and 0.568 / 0.573 on validation, AJI 0.616 / 0.615 and 0.600 / 0.599,
predicted per true nucleus 0.981 / 0.962 on validation. A smallest nucleus of 8 µm² or more costs AJI on both."""

DEFAULT_SEED = 0
"""The seed segment and evaluate sample with when none is given (training and fine-tuning take TrainConfig.seed)."""

REVIEW_COUNT = 10
"""How many of the likely errors the Segment widget's Review steps through until the user asks for more or fewer."""
