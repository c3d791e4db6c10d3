"""cxrjax: deep learning for chest X-rays in JAX and Flax.

`ls cxrjax` shows the entry point (cli.py), the jobs (jobs/), the run state (run/), the foundations (core/) and
the domain packages. The package imports one way, from foundations to entry points (tests/test_layers.py):
  0-1  core/ errors, files, registry; text, ops; run/ figures, summaries   foundations, outputs
  2-3  data, metrics; models; core/ decoding, optim, sharding, config, recipes  data, scores, models, devices
  4-5  weights (importers); tasks, evaluators (configured scoring units)    what a run trains and scores
  6-8  run/ workdir; jobs/ train, evaluate, inference, serve, sweep, aot, score; cli (the entry point)
"""

__version__ = "0.1.0"
