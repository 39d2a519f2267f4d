"""napari dock widgets (thin: they gather settings and run one engine function in a worker).

Importing them changes nothing in the process: OpenMP's waiting policy is asked for when the plugin first needs
torch (_model_cache.ask_passive_openmp).
"""
