"""Help texts that quote the bundled model's own sampling defaults, read from its file's header (no torch) only when
help is shown, so that they follow the model file instead of a literal."""

from __future__ import annotations

import argparse
from typing import Any

BUNDLED_SAMPLING_STEPS = "{bundled sampling steps}"
BUNDLED_SAMPLES = "{bundled samples}"
"""Stand-ins in help texts for the bundled model's own sampling defaults (its config's sampling_steps and
default_samples), read from the model file's header only when help is shown (HelpFormatter)."""


def bundled_sampling_defaults() -> dict[str, str]:
    """The stand-ins' values for the default bundled model, from its config; '?' when its file cannot be read."""
    from napari_cdal.catalog import bundled_model_path
    from napari_cdal.engine.config import ModelConfig
    from napari_cdal.engine.io.checkpoint import CheckpointError, read_metadata

    try:
        config = ModelConfig.from_dict(read_metadata(bundled_model_path())["model_config"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return {BUNDLED_SAMPLING_STEPS: "?", BUNDLED_SAMPLES: "?"}
    return {BUNDLED_SAMPLING_STEPS: str(config.sampling_steps), BUNDLED_SAMPLES: str(config.default_samples)}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, filling in the bundled model's sampling defaults where a help text names them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and (BUNDLED_SAMPLING_STEPS in text or BUNDLED_SAMPLES in text):
            for stand_in, value in bundled_sampling_defaults().items():
                text = text.replace(stand_in, value)
        return text


def sub_parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """One sub-command's parser, its help formatted by HelpFormatter."""
    parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)
    return parser
