"""napari-cdal: nuclei segmentation with cDAL (conditional diffusion with spatial attention and latent embedding)."""

__version__ = "0.1.0"
