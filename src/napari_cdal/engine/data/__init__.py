"""Training data: tile folders, stain augmentation and patch sampling."""
