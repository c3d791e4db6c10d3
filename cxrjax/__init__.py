"""cxrjax: deep learning for chest X-rays in JAX and Flax.

The package imports one way, from foundations to entry points (tests/test_layers.py checks it):
  0-1  errors, files, registry; text, ops, figures, summaries             foundations
  2-3  data, metrics; models, decoding, optim, sharding, config, recipes  data, scores, models, devices, recipes
  4-5  weights (importers); tasks, evaluators (configured scoring units)  what a run trains and scores
  6-8  workdir (run state); train, evaluate, inference, serve, sweep, aot, score (jobs); cli (entry point)
"""

__version__ = "0.1.0"
