"""From an image to nuclei: tiling, sampling, instances, and the scores that judge them."""
