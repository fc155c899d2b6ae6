"""Converters of the conv family (to be written)."""
