"""Whole slides: tiles read on demand, segmented block by block, nuclei stitched across seams into a chunked store."""
