"""Converters of the inner_product family (to be written)."""
