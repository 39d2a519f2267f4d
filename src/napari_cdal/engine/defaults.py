"""The defaults a user meets, in one place: pixel size, threshold, devices (no torch, so the CLI's help stays quick)."""

from __future__ import annotations

DEFAULT_IMAGE_MPP = 0.25
"""µm per pixel assumed for an image that does not say: a 40x H&E tile (MoNuSeg's)."""

MPP_RANGE = (0.05, 5.0)
"""µm per pixel an image may declare: from a 200x scan (0.05) to a 2x overview (5)."""

DEFAULT_THRESHOLD = 0.5
"""Foreground probability above which a pixel belongs to a nucleus (benchmarks/accuracy.py --thresholds)."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Where to compute: auto takes a CUDA GPU when torch sees one, else the CPU."""

FINETUNE_D_LR_RATIO = 0.5
"""The discriminator's learning rate as a share of the generator's when fine-tuning."""
