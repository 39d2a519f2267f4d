"""Test-time augmentation inside the K samples: each sample sees the image turned or flipped, and is turned back.

Tissue has no up or left, so the model should find the same nuclei in a flipped tile. Giving each
of the K samples its own view (the eight symmetries of a square, or the four of a rectangle) costs
what K samples cost anyway, and their disagreement then also measures what the view changes.
"""

from __future__ import annotations

import torch

VIEWS: tuple[tuple[int, bool], ...] = (
    (0, False),
    (0, True),
    (2, True),
    (2, False),  # the identity, and the flips a rectangle keeps its shape under
    (1, False),
    (3, False),
    (1, True),
    (3, True),  # quarter turns and transposes: squares only
)
"""Each view as (quarter turns, mirrored first): the identity, left-right, up-down, half turn, then the four that
swap height and width. Sample k takes view k (modulo the views the tile's shape allows)."""

RECTANGLE_VIEWS = 4
"""The first views of VIEWS that keep a rectangle's shape."""


def view_count(height: int, width: int) -> int:
    """How many of VIEWS a (height, width) map can take and keep its shape."""
    return len(VIEWS) if height == width else RECTANGLE_VIEWS


def to_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """x (..., H, W) as seen in VIEWS[view]: mirrored left-right first if the view says so, then turned."""
    turns, mirrored = VIEWS[view]
    if mirrored:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def from_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """Undo to_view: a map computed in VIEWS[view] back on the image's own grid."""
    turns, mirrored = VIEWS[view]
    if turns:
        x = torch.rot90(x, -turns, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if mirrored else x


def member_views(members: int, samples: int, height: int, width: int) -> list[int]:
    """The view of each of B*K members (image-major, K samples each): sample k of every image takes view k."""
    count = view_count(height, width)
    return [(member % samples) % count for member in range(members)]


def apply_views(x: torch.Tensor, views: list[int], inverse: bool = False) -> torch.Tensor:
    """Each member x[i] (batch first) in its view `views[i]`, or back from it with `inverse`."""
    if all(view == 0 for view in views):
        return x
    move = from_view if inverse else to_view
    return torch.stack([move(member, view) for member, view in zip(x, views, strict=True)])
