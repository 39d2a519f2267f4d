"""Helpers shared by the benchmark scripts: data location, the split, printing and JSON output."""

from __future__ import annotations

import csv
import json
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SPLIT_FILE = ROOT / "benchmarks" / "monuseg_split.json"


def default_data_dir() -> Path:
    """MoNuSeg training folder: $NAPARI_CDAL_MONUSEG, else the project's shared data beside the repo."""
    env = os.environ.get("NAPARI_CDAL_MONUSEG")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "monuseg" / "train"


def split() -> dict[str, list[str]]:
    data = json.loads(SPLIT_FILE.read_text())
    return {"train": data["train"], "validation": data["validation"]}


CUT_GAP_PX = 32
"""Pixels left out on the corrected side of a tile cut in two, so that no nucleus on the cut is half-seen."""


def organs_of(data: Path) -> dict[str, str]:
    """Each tile's organ, from the data's manifest.csv."""
    with (Path(data) / "manifest.csv").open(newline="") as handle:
        return {row["id"]: row["organ"] for row in csv.DictReader(handle)}


def validation_by_organ(data: Path, split_file: Path) -> dict[str, list[str]]:
    """The split's validation tile names grouped by organ (the data's manifest.csv), in the split's order."""
    names = json.loads(Path(split_file).read_text())["validation"]
    organs = organs_of(data)
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(organs[name], []).append(name)
    return grouped


def crop_columns(tile: Any, x0: int, x1: int, suffix: str) -> Any:
    """Columns x0:x1 of a Tile, named with `suffix`."""
    return replace(
        tile,
        name=f"{tile.name} {suffix}",
        image=tile.image[:, x0:x1],
        foreground=tile.foreground[:, x0:x1],
        instances=tile.instances[:, x0:x1],
    )


def machine() -> dict[str, Any]:
    """Where a figure was measured."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def display_path(path: str | Path) -> str:
    """A path relative to the project when it lies inside it, so results name no machine's folders."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table (markdown-compatible)."""

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)
