"""Importers of pretrained weights into Flax parameter trees."""
