"""Former name of windows.py: a 512-px part of an image is a window, a tile is a data set's image. Kept for scripts.

TILE_PX, tile_boxes and TileBlender are WINDOW_PX, window_boxes and WindowBlender under their former names.
"""

from __future__ import annotations

from napari_cdal.engine.segment.windows import WINDOW_PX, Box, WindowBlender, blend_window, window_boxes

TILE_PX = WINDOW_PX
tile_boxes = window_boxes
TileBlender = WindowBlender

__all__ = ["TILE_PX", "Box", "TileBlender", "blend_window", "tile_boxes"]
