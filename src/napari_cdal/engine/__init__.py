"""The cDAL engine: torch and numpy only, never napari or Qt."""
