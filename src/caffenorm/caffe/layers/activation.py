"""Converters of the activation family (to be written)."""
