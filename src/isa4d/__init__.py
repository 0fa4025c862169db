"""ISA4D: interspatial attention for 4D human video generation (Lightning + Hydra suite)."""

__version__ = "0.1.0"
