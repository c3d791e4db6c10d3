"""cxrjax: deep learning for chest X-rays in JAX and Flax."""

__version__ = "0.1.0"
