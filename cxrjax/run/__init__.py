"""Run state: a training workdir (layout, train state, checkpoints), its training log and its figures."""
