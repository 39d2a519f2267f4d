"""The Segment widgets docked in each viewer, so that Fine-tune can follow the one beside it (its image and model),
hold it while fine-tuning takes the CPU and hand it the new model."""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import napari  # type: ignore[import-untyped]
    from magicgui.widgets import ComboBox, FileEdit


class DockedSegment(Protocol):
    """What Fine-tune uses of a docked Segment widget (segment.SegmentWidget)."""

    image: ComboBox
    model: ComboBox
    model_file: FileEdit

    @property
    def viewer(self) -> napari.viewer.Viewer:
        """The viewer the widget is docked in."""

    def selected_model_path(self) -> str | None:
        """The model Segment runs with (None when none is chosen)."""

    def refresh_models(self, select: str | Path | None = None) -> None:
        """Re-read the model folder and select `select`."""

    def hold(self, reason: str | None) -> None:
        """Hold Segment's start buttons while another run takes the CPU (None: free them)."""


_SEGMENT_WIDGETS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""Each live Segment widget and when it was made (the Fine-tune widget follows the latest in its viewer)."""


def register_segment_widget(widget: DockedSegment) -> None:
    """Let other widgets find this Segment widget (until it is forgotten or garbage)."""
    _SEGMENT_WIDGETS[widget] = time.monotonic_ns()


def forget_segment_widget(widget: DockedSegment) -> None:
    """The Segment widget's dock is closed: other widgets stop following it."""
    _SEGMENT_WIDGETS.pop(widget, None)


def docked_segment_widget(viewer: napari.viewer.Viewer) -> DockedSegment | None:
    """The Segment widget docked in `viewer` (the latest one when there are several), else None."""
    # napari hands each plugin widget its own proxy of the viewer: compare what the proxies wrap
    target = getattr(viewer, "__wrapped__", viewer)
    docked: list[tuple[int, DockedSegment]] = [
        (made, widget)
        for widget, made in list(_SEGMENT_WIDGETS.items())
        if getattr(widget.viewer, "__wrapped__", widget.viewer) is target
    ]
    return max(docked, key=lambda entry: entry[0], default=(0, None))[1]
