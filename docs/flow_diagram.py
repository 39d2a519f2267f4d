"""Draw docs/images/flow.svg: how an image and a training run flow through the packages (no plotting library).

    python docs/flow_diagram.py

The engine's packages and their modules are read from the source tree, each module with the
first line of its docstring as a tooltip, so a module added or moved shows up the next time the
script runs (tests/test_docs.py checks that the picture names every engine module).
"""

from __future__ import annotations

import ast
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "src" / "napari_cdal" / "engine"
OUT = ROOT / "docs" / "images" / "flow.svg"

PACKAGES = [
    ("slide", 360, 40),
    ("io", 30, 200),
    ("method", 360, 200),
    ("segment", 690, 200),
    ("data", 30, 430),
    ("training", 690, 430),
]
"""Where each engine package's box stands (x, y of its top-left corner)."""

ARROWS = [
    ((160, 102), (160, 200), "image files"),
    ((290, 240), (360, 240), "pixels"),
    ((690, 290), (620, 290), "tiles"),
    ((620, 240), (690, 240), "masks"),
    ((820, 200), (820, 102), "labels, maps"),
    ((160, 296), (160, 430), "tile folders"),
    ((290, 470), (690, 470), "augmented patches"),
    ((750, 430), (560, 313), "updates G and D"),
    ((690, 520), (170, 296), "checkpoints"),
    ((490, 136), (490, 200), "blocks of a slide"),
]
"""(from, to, label) of the main flows: segmenting (top) and training (bottom)."""

BOX_WIDTH = 260
LINE = 17


def first_line(path: Path) -> str:
    """A module's docstring's first line (its job), '' when it has none."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return (doc or "").splitlines()[0] if doc else ""


def modules(package: str) -> list[tuple[str, str]]:
    """(module name, job) of every module in an engine package, sorted."""
    folder = ENGINE / package
    return [(path.stem, first_line(path)) for path in sorted(folder.glob("*.py")) if path.stem != "__init__"]


def box(x: float, y: float, title: str, rows: list[tuple[str, str]], fill: str) -> list[str]:
    """An SVG group: a titled rectangle listing module names, each with its job as a tooltip."""
    height = 28 + LINE * max(1, len(rows))
    parts = [
        f'<g><rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{height}" rx="8" fill="{fill}" '
        'stroke="#333" stroke-width="1.2"/>',
        f'<text x="{x + 10}" y="{y + 19}" font-weight="bold">{escape(title)}</text>',
    ]
    for index, (name, job) in enumerate(rows):
        parts.append(
            f'<text x="{x + 18}" y="{y + 38 + LINE * index}"><title>{escape(job)}</title>{escape(name)}</text>'
        )
    parts.append("</g>")
    return parts


def arrow(start: tuple[float, float], end: tuple[float, float], label: str) -> list[str]:
    """A labelled arrow from `start` to `end`."""
    (x0, y0), (x1, y1) = start, end
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    return [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#555" stroke-width="1.5" marker-end="url(#head)"/>',
        f'<text x="{mx}" y="{my - 6}" font-size="11" fill="#444" text-anchor="middle">{escape(label)}</text>',
    ]


def draw() -> str:
    """The whole picture as SVG text."""
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="980" height="760" font-family="sans-serif" font-size="13">',
        '<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
        '<path d="M0,0 L10,4 L0,8 z" fill="#555"/></marker></defs>',
        '<rect width="980" height="760" fill="white"/>',
    ]
    parts += box(
        30,
        40,
        "napari: _widgets/, _reader, _writer",
        [("gather parameters, run one generator", ""), ("turn its events into layers", "")],
        "#e8f0fe",
    )
    parts += box(
        690, 40, "command line: cli/", [("segment, evaluate, train, finetune", ""), ("info, view", "")], "#e8f0fe"
    )
    top = [(path.stem, first_line(path)) for path in sorted(ENGINE.glob("*.py")) if path.stem != "__init__"]
    parts += box(360, 600, "engine/ (shared by all)", top, "#f3f3f3")
    for package, x, y in PACKAGES:
        parts += box(x, y, f"engine/{package}/", modules(package), "#fff7e0")
    for start, end, label in ARROWS:
        parts += arrow(start, end, label)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    """Write the picture."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(draw())
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
