"""Importers of pretrained weights into Flax parameter trees.

The modules that register plug-ins (cxrjax/core/registry.py), imported here so that the registries are full:
the weight formats of `cxrjax port-weights --format` (formats.FORMATS, listed in this order), the Hugging
Face families (hf.FAMILIES) and the kinds of pretrained part `config.init` loads (pretrained.KINDS).
"""

from cxrjax.weights import chexnet, seed003, hf, hf_blip, hf_git, chexbert_labeler, pretrained
