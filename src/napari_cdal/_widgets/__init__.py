"""napari dock widgets (thin: they gather settings and run one engine function in a worker)."""
