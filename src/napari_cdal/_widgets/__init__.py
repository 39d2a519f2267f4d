"""napari dock widgets (thin: they gather settings and run one engine function in a worker).

In napari the GUI thread (and, without a GPU, the canvas' software renderer) shares the cores with
the worker's torch threads. OpenMP's default spin-waiting turns each moment they take into lost
compute, so the widgets ask for passive waiting before torch is first imported (a user's own
OMP_WAIT_POLICY wins); on 2 cores it took a Segment click from 0.84 s to 0.65 s over the engine.
"""

import os
import sys

OPENMP_SPINS = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
"""True when torch, and with it OpenMP, was loaded before the plugin could ask for passive waiting (another plugin or
a script imported it first) and the user chose no policy: OpenMP's threads then spin-wait, and a Segment run takes
one torch thread (_jobs.threads_for_the_gui)."""

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
