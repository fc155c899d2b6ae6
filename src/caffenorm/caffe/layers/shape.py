"""Converters of the shape family (to be written)."""
