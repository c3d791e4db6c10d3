"""The jobs the command line runs: train, evaluate, predict (inference), score, sweep, compile (aot), serve."""
