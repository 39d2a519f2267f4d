"""Reading and writing files: images, annotations and checkpoints."""
