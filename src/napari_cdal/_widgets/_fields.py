"""The fields and parts both dock widgets are made of (device, µm/px, Cancel, progress bar, status line) and the one
tabbed dock they share, sized so that docking them never widens it."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FloatSpinBox, Label, ProgressBar, PushButton

from napari_cdal._widgets._inputs import is_volume_layer
from napari_cdal.engine.defaults import DEFAULT_IMAGE_MPP, MPP_RANGE
from napari_cdal.layer_metadata import image_mpp

if TYPE_CHECKING:
    from napari.layers import Image  # type: ignore[import-untyped]


def device_choices() -> list[tuple[str, str]]:
    """auto (labelled with what it picks), cpu, and cuda (with the GPU's name) when there is one."""
    from napari_cdal._widgets._model_cache import ask_passive_openmp

    ask_passive_openmp()  # the plugin's first torch: OpenMP's waiting is chosen before it loads
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        return [(f"auto (CUDA: {gpu})", "auto"), ("cpu", "cpu"), (f"cuda: {gpu}", "cuda")]
    return [("auto (CPU)", "auto"), ("cpu", "cpu")]


def device_combo() -> ComboBox:
    """The device field of both widgets: auto (a GPU when there is one), cpu, cuda."""
    return ComboBox(
        label="device",
        choices=device_choices(),
        tooltip="where the model runs: auto takes the GPU when there is one, else the CPU",
    )


def cancel_button(what: str, tooltip: str) -> PushButton:
    """A widget's one Cancel button, named after what it stops ('Cancel segmenting'); off until a run starts."""
    return PushButton(text=f"Cancel {what}", enabled=False, tooltip=tooltip)


def mpp_spin_box(tooltip: str) -> FloatSpinBox:
    """The µm/px field of both widgets: 0.25 (a 40x tile) until a layer's scale says otherwise."""
    low, high = MPP_RANGE
    return FloatSpinBox(label="µm/px", min=low, max=high, step=0.01, value=DEFAULT_IMAGE_MPP, tooltip=tooltip)


def set_mpp_from_layer(spin: FloatSpinBox, layer: Image, status: Label) -> None:
    """Fill the µm/px field from a layer's scale; a scale outside what the field takes is said, not clamped."""
    if is_volume_layer(layer):  # a volume's scale is its voxel spacing, which no model of classes resamples
        return
    value = image_mpp(layer)
    low, high = MPP_RANGE
    if low <= value <= high:
        spin.value = value
        return
    spin.value = DEFAULT_IMAGE_MPP
    status.value = (
        f"{layer.name}'s scale says {value:g} µm/px, outside {low:g}-{high:g}: "
        f"check its scale, or set µm/px here (now {DEFAULT_IMAGE_MPP:g})"
    )


STATUS_MIN_WIDTH = 260
"""The status line's narrowest width in screen pixels: wide enough that a message wraps into lines, not a column."""


def status_label() -> Label:
    """The status line at the bottom of a widget (long messages wrap, at least STATUS_MIN_WIDTH wide)."""
    from qtpy.QtWidgets import QSizePolicy

    status = Label(value="")
    status.native.setWordWrap(True)
    status.native.setMinimumWidth(STATUS_MIN_WIDTH)
    status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)  # the dock's width
    return status


IDLE_PROGRESS_TIP = "how far the current run has got; empty between runs"


def progress_bar() -> ProgressBar:
    """The widget's own progress bar, above the status line: '<done> of <total>' during a run, empty between runs."""
    bar = ProgressBar(label="progress", min=0, max=1, value=0, tooltip=IDLE_PROGRESS_TIP)
    bar.native.setFormat("")
    return bar


PLUGIN_WIDGET = "napari-cdal widget"
"""The object name of both dock widgets, by which each finds the other's dock to share it as tabs."""

CHOICE_CHARS = 16
"""How many characters a drop-down is sized for: a long layer or model name is cut in its middle (the whole name in
the open list) rather than widening the dock, so docking a widget never narrows the canvas."""


def keep_narrow(widget: Any) -> None:
    """Size every drop-down of `widget` for CHOICE_CHARS characters, long names cut in their middle."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QComboBox

    for combo in widget.native.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(CHOICE_CHARS)
        combo.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)


def fit_labels(widget: Any) -> None:
    """Give the field labels of `widget` (nested rows too) one column as wide as the widest in the widget's own font.

    magicgui measures labels in the application's font, and napari's style sheet draws them larger: a narrow dock
    then clips them ('corrected regior')."""
    from qtpy.QtWidgets import QLabel

    in_column = [
        label for label in widget.native.findChildren(QLabel) if label.minimumWidth() > 0 and not label.wordWrap()
    ]
    for label in in_column:
        if not label.text():  # the empty label beside a nested row or the status line: no indent, the full width
            label.setMinimumWidth(0)
            label.hide()
    labels = [label for label in in_column if label.text()]
    for label in labels:
        label.ensurePolished()
    widest = max((label.fontMetrics().horizontalAdvance(label.text()) + 6 for label in labels), default=0)
    for label in labels:
        label.setMinimumWidth(widest)


def tab_with_sibling(widget: Any) -> None:
    """Once napari has docked `widget`, put it in one tabbed dock with the other napari-cdal widget, in front.

    Its drop-downs are kept narrow and its labels fitted to napari's font, so the shared dock is no wider than the
    first widget made it."""
    from qtpy.QtCore import QTimer

    widget.native.setObjectName(PLUGIN_WIDGET)
    reference = weakref.ref(widget)
    QTimer.singleShot(0, lambda: _tabify(reference()))


def _dock_of(widget: Any) -> Any:
    """The QDockWidget napari put `widget` in, None before it is docked or once it is deleted."""
    from qtpy.QtWidgets import QDockWidget

    try:
        own = widget.native if widget is not None else None
        while own is not None and not isinstance(own, QDockWidget):
            own = own.parentWidget()
    except RuntimeError:  # the widget was deleted before napari docked it
        return None
    return own


def _tabify(widget: Any) -> None:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

    own = _dock_of(widget)
    window = own.parentWidget() if own is not None else None
    if not isinstance(window, QMainWindow):
        return
    keep_narrow(widget)
    fit_labels(widget)
    reference = weakref.ref(widget)
    for dock in window.findChildren(QDockWidget):
        if dock is not own and not dock.isHidden() and dock.findChildren(QWidget, PLUGIN_WIDGET):
            window.tabifyDockWidget(dock, own)
            # the tab bar is made when the layout is next done: bring the new tab to the front after that
            QTimer.singleShot(0, lambda: _raise(reference()))
            return


def _raise(widget: Any) -> None:
    own = _dock_of(widget)
    if own is not None:
        own.raise_()
