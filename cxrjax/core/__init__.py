"""Foundations: user errors, atomic files, the plug-in registry, run configs and recipes, the device mesh,
the optimizer and the searches."""
