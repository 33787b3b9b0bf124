"""Tile transforms of the fast convolution algorithms (Winograd F(6x6,3x3), 8x8 and 16x16
real FFTs) live here; the convolution layers that use them are not built yet."""
