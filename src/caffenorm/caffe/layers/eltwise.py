"""Converters of the eltwise family (to be written)."""
