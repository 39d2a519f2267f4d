"""Copy a trained model into the package as the bundled default, with its chosen reverse steps.

    python tools/bundle_model.py RUN_MODEL.safetensors --default-steps 1

The training record goes along unchanged, plus a `bundled` entry saying where the weights came
from and why the default T was chosen, so `napari-cdal info` tells the whole story.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from napari_cdal.engine.model import bundled_model_path, load_model, save_model

MAX_BYTES = 25 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the run's best model (what `napari-cdal train --out` wrote)")
    parser.add_argument("--default-steps", type=int, required=True,
                        help="reverse steps T the bundled model samples with unless told otherwise")
    parser.add_argument("--reason", default="benchmarks/accuracy.py T/K curve; see docs/model_card.md")
    parser.add_argument("--out", default=str(bundled_model_path()))
    args = parser.parse_args()

    model = load_model(args.model)
    weight_bytes = sum(t.numel() * t.element_size() for module in (model.generator, model.discriminator)
                       for t in module.state_dict().values())
    if weight_bytes > MAX_BYTES:
        raise SystemExit(f"{args.model} holds {weight_bytes / 2**20:.1f} MB of weights, over the 25 MB "
                         "the package allows; nothing was written")
    model.config = dataclasses.replace(model.config, sampling_steps=args.default_steps)
    model.record["bundled"] = {"from_step": model.record.get("steps"), "default_steps": args.default_steps,
                               "default_steps_chosen_by": args.reason}
    save_model(args.out, model)
    size = Path(args.out).stat().st_size
    print(f"bundled step {model.record.get('steps')} as {args.out} ({size / 2**20:.1f} MB), "
          f"default T = {args.default_steps}")


if __name__ == "__main__":
    main()
