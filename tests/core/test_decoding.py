"""Tests for cxrjax.core.decoding: brute-force oracles for greedy and beam search."""

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.core import decoding

START, END = 0, 1


def _sigmoid(xp, x):
  return 1.0 / (1.0 + xp.exp(-x))


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _penalty(length: int, alpha: float) -> float:
  return ((5.0 + length) / 6.0) ** alpha


# A tiny GRU decoder written once for numpy (the oracles) and jax.numpy (the
# searches). Its next-token distribution depends on the whole history, on the
# example (features) and on the position (an end-token bias growing with it).


def _make_gru(seed: int, vocab: int, batch: int, hidden: int = 6, end_slope: float = 0.0):
  rng = np.random.default_rng(seed)
  names = ["embed", "w_z", "u_z", "w_r", "u_r", "w_n", "u_n", "w_out"]
  shapes = [(vocab, hidden)] + [(hidden, hidden)] * 6 + [(hidden, vocab)]
  params = {name: rng.normal(size=shape).astype(np.float32) for name, shape in zip(names, shapes)}
  params["w_out"] *= 2.0  # peaked distributions, as a trained decoder's
  features = rng.normal(size=(batch, hidden)).astype(np.float32)
  return params, {"h": np.zeros((batch, hidden), np.float32), "features": features}, end_slope


def _gru_step(xp, params, end_slope, tokens, cache, position):
  x = params["embed"][tokens] + cache["features"]
  h = cache["h"]
  z = _sigmoid(xp, x @ params["w_z"] + h @ params["u_z"])
  r = _sigmoid(xp, x @ params["w_r"] + h @ params["u_r"])
  n = xp.tanh(x @ params["w_n"] + (r * h) @ params["u_n"])
  h = (1.0 - z) * n + z * h
  vocab = params["w_out"].shape[1]
  logits = h @ params["w_out"] + end_slope * position * (xp.arange(vocab) == END)
  return logits, {"h": h, "features": cache["features"]}


def _jax_gru(params, end_slope):
  jax_params = jax.tree.map(jnp.asarray, params)
  return functools.partial(_gru_step, jnp, jax_params, end_slope)


def _gru_search(search, end_slope, **options):
  """search compiled once for any GRU parameters: `(params, cache) -> result`."""

  def step_fn(params, tokens, cache, position):
    return _gru_step(jnp, params, end_slope, tokens, cache, position)

  return decoding.jit_search(search, step_fn, start_id=START, end_id=END, **options)


def _numpy_gru(params, end_slope):
  np_params = {k: v.astype(np.float64) for k, v in params.items()}

  def step(tokens, cache, position):
    cache = {k: np.asarray(v, np.float64) for k, v in cache.items()}
    return _gru_step(np, np_params, end_slope, np.asarray(tokens), cache, position)

  return step


def _example_cache(cache, index):
  return {k: v[index : index + 1] for k, v in cache.items()}


def _all_sequences(np_step, cache, vocab, max_length):
  """Every sequence (ended, or truncated at max_length) with its log-probability."""
  results = []

  def expand(prefix, last, cache, log_prob):
    logits, cache = np_step(np.array([last]), cache, len(prefix))
    log_probs = _log_softmax(logits[0])
    for token in range(vocab):
      sequence = prefix + (token,)
      if token == END or len(sequence) == max_length:
        results.append((sequence, log_prob + log_probs[token]))
      else:
        expand(sequence, token, cache, log_prob + log_probs[token])

  expand((), START, cache, 0.0)
  return results


def _replay_log_probs(np_step, cache, tokens):
  """Log-probability of each [max_length] row of tokens (up to its end token)."""
  log_prob, last = 0.0, START
  for position, token in enumerate(tokens):
    logits, cache = np_step(np.array([last]), cache, position)
    log_prob += _log_softmax(logits[0])[token]
    if token == END:
      break
    last = token
  return log_prob


def _lengths(tokens: np.ndarray) -> np.ndarray:
  return np.asarray(decoding.sequence_lengths(jnp.asarray(tokens), END))


def _check_well_formed(tokens: np.ndarray, pad_id: int) -> None:
  """Padding exactly after the first end token; none in truncated sequences.

  pad_id must lie outside the vocabulary, so that padding is unambiguous.
  """
  max_length = tokens.shape[-1]
  for row in tokens.reshape(-1, max_length):
    ends = np.flatnonzero(row == END)
    stop = ends[0] + 1 if len(ends) else max_length
    assert np.all(row[stop:] == pad_id), row
    assert pad_id not in row[:stop], row


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_wide_beam_search_returns_exhaustive_ranking(alpha):
  vocab, max_length, batch, pad_id = 5, 4, 2, 9
  params, cache, end_slope = _make_gru(seed=1, vocab=vocab, batch=batch, end_slope=0.7)
  # 4 non-end tokens: 1 + 4 + 16 + 64 = 85 ended and 4**4 = 256 truncated
  # sequences. 400 beams never prune any, and leave 59 slots empty.
  beam_size, num_sequences = 400, 341
  tokens, scores = decoding.beam_search(
    _jax_gru(params, end_slope),
    cache,
    start_id=START,
    end_id=END,
    max_length=max_length,
    beam_size=beam_size,
    length_penalty=alpha,
    pad_id=pad_id,
  )
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert tokens.shape == (batch, beam_size, max_length) and scores.shape == (batch, beam_size)
  np_step = _numpy_gru(params, end_slope)
  for b in range(batch):
    ranked = sorted(
      (
        (log_prob / _penalty(len(seq), alpha), seq)
        for seq, log_prob in _all_sequences(np_step, _example_cache(cache, b), vocab, max_length)
      ),
      reverse=True,
    )
    assert len(ranked) == num_sequences
    expected_tokens = np.array([seq + (pad_id,) * (max_length - len(seq)) for _, seq in ranked])
    np.testing.assert_array_equal(tokens[b, :num_sequences], expected_tokens)
    np.testing.assert_allclose(scores[b, :num_sequences], [score for score, _ in ranked], rtol=1e-5, atol=1e-5)
    assert np.all(scores[b, num_sequences:] == -np.inf)
    assert np.all(tokens[b, num_sequences:] == pad_id)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_scores_are_penalized_log_probs_of_returned_sequences(alpha):
  vocab, max_length, batch, beam_size, pad_id, end_slope = 7, 8, 3, 3, 10, 0.4
  decode = _gru_search(
    decoding.beam_search, end_slope, max_length=max_length, beam_size=beam_size, length_penalty=alpha, pad_id=pad_id
  )
  for seed in range(4):
    params, cache, _ = _make_gru(seed=seed, vocab=vocab, batch=batch)
    tokens, scores = map(np.asarray, decode(jax.tree.map(jnp.asarray, params), cache))
    _check_well_formed(tokens, pad_id)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 0), "beams must be sorted best first"
    lengths = _lengths(tokens)
    assert np.any(lengths < max_length), "the model should end some sequences early"
    np_step = _numpy_gru(params, end_slope)
    for b, k in itertools.product(range(batch), range(beam_size)):
      assert len(set(map(tuple, tokens[b]))) == beam_size, "beams must be distinct"
      log_prob = _replay_log_probs(np_step, _example_cache(cache, b), tokens[b, k])
      np.testing.assert_allclose(scores[b, k], log_prob / _penalty(lengths[b, k], alpha), rtol=1e-5, atol=1e-5)


def _host_beam_search(np_step, cache, vocab, max_length, beam_size, alpha):
  """Beam search of one example with Python lists, running every step.

  Same rules as decoding.beam_search (top 2k candidates, ended ones kept from
  the top k, truncated ones compete at the end) but no early exit.
  """
  alive = [((), 0.0, cache)]  # (tokens, log_prob, cache)
  finished = []  # (score, tokens)
  for position in range(max_length):
    candidates = []
    for tokens, log_prob, cache in alive:
      logits, new_cache = np_step(np.array([tokens[-1] if tokens else START]), cache, position)
      log_probs = _log_softmax(logits[0])
      candidates.extend((log_prob + log_probs[token], tokens + (token,), new_cache) for token in range(vocab))
    candidates = sorted(candidates, key=lambda candidate: -candidate[0])[: 2 * beam_size]
    finished.extend(
      (log_prob / _penalty(position + 1, alpha), tokens)
      for rank, (log_prob, tokens, _) in enumerate(candidates)
      if tokens[-1] == END and rank < beam_size
    )
    alive = [(tokens, log_prob, cache) for log_prob, tokens, cache in candidates if tokens[-1] != END][:beam_size]
  finished.extend((log_prob / _penalty(max_length, alpha), tokens) for tokens, log_prob, _ in alive)
  return sorted(finished, reverse=True)[:beam_size]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_beam_search_matches_host_beam_search(alpha):
  # Also checks that the early exit never changes the result.
  vocab, max_length, batch, beam_size, pad_id, end_slope = 6, 8, 3, 3, 0, 0.5
  decode = _gru_search(
    decoding.beam_search, end_slope, max_length=max_length, beam_size=beam_size, length_penalty=alpha, pad_id=pad_id
  )
  for seed in range(5):
    params, cache, _ = _make_gru(seed=seed, vocab=vocab, batch=batch)
    tokens, scores = map(np.asarray, decode(jax.tree.map(jnp.asarray, params), cache))
    np_step = _numpy_gru(params, end_slope)
    for b in range(batch):
      expected = _host_beam_search(np_step, _example_cache(cache, b), vocab, max_length, beam_size, alpha)
      expected_tokens = [seq + (pad_id,) * (max_length - len(seq)) for _, seq in expected]
      np.testing.assert_array_equal(tokens[b], expected_tokens, err_msg=f"seed {seed} example {b}")
      np.testing.assert_allclose(scores[b], [score for score, _ in expected], rtol=1e-5, atol=1e-5)


def _host_greedy(np_step, cache, max_length, pad_id, ngram=0, ngram_penalty=None):
  """Greedy decoding of one example, one argmax per Python iteration."""
  tokens, log_prob, last = [], 0.0, START
  for position in range(max_length):
    logits, cache = np_step(np.array([last]), cache, position)
    log_probs = _log_softmax(np.asarray(logits, np.float64)[0])
    if ngram:
      prefix = tuple(tokens[len(tokens) - ngram + 1 :]) if ngram > 1 else ()
      for j in range(len(tokens) - ngram + 1):
        if tuple(tokens[j : j + ngram - 1]) == prefix:
          follower = tokens[j + ngram - 1]
          log_probs[follower] = -np.inf if ngram_penalty is None else log_probs[follower] + ngram_penalty
    token = int(np.argmax(log_probs))
    tokens.append(token)
    log_prob += log_probs[token]
    if token == END:
      break
    last = token
  return tokens + [pad_id] * (max_length - len(tokens)), log_prob


def test_greedy_matches_host_argmax_loop_and_beam_of_one():
  vocab, max_length, batch, pad_id, end_slope = 6, 9, 4, 9, 0.5
  greedy = _gru_search(decoding.greedy_search, end_slope, max_length=max_length, pad_id=pad_id)
  beam_of_one = _gru_search(decoding.beam_search, end_slope, max_length=max_length, beam_size=1, pad_id=pad_id)
  lengths = []
  for seed in range(4):
    params, cache, _ = _make_gru(seed=seed, vocab=vocab, batch=batch)
    jax_params = jax.tree.map(jnp.asarray, params)
    tokens, log_probs = map(np.asarray, greedy(jax_params, cache))
    assert tokens.shape == (batch, max_length) and tokens.dtype == np.int32
    _check_well_formed(tokens, pad_id)
    lengths.extend(_lengths(tokens))
    np_step = _numpy_gru(params, end_slope)
    for b in range(batch):
      expected_tokens, expected_log_prob = _host_greedy(np_step, _example_cache(cache, b), max_length, pad_id)
      np.testing.assert_array_equal(tokens[b], expected_tokens)
      np.testing.assert_allclose(log_probs[b], expected_log_prob, rtol=1e-5, atol=1e-5)
    beam_tokens, beam_scores = map(np.asarray, beam_of_one(jax_params, cache))
    np.testing.assert_array_equal(beam_tokens[:, 0], tokens)
    np.testing.assert_allclose(beam_scores[:, 0], log_probs, rtol=1e-5, atol=1e-5)
  assert min(lengths) < max_length and max(lengths) == max_length, "want both ended and truncated sequences"


# A step function whose cache is a nested pytree of several ranks; the logits
# hash the full token history recorded in the cache, so a cache row gathered
# from the wrong beam changes the score of every later step.


def _history_model(seed: int, vocab: int, batch: int, max_length: int):
  rng = np.random.default_rng(seed)
  hidden, table_size = 4, 31
  weights = {
    "table": jnp.asarray(2.0 * rng.normal(size=(table_size, vocab)), jnp.float32),
    "embed": jnp.asarray(rng.normal(size=(vocab, hidden)), jnp.float32),
    "recur": jnp.asarray(rng.normal(size=(hidden, hidden)), jnp.float32),
    "out": jnp.asarray(rng.normal(size=(hidden, vocab)), jnp.float32),
    "feature_out": jnp.asarray(rng.normal(size=(6, vocab)), jnp.float32),
  }
  hash_weights = jnp.asarray([pow(3, i, table_size) for i in range(max_length + 1)], jnp.int32)

  def step_fn(tokens, cache, position):
    history = cache["history"].at[:, position].set(tokens)  # [rows, max_length + 1]
    code = jnp.sum(history * hash_weights, axis=1) % table_size  # [rows]
    h, counts = cache["rnn"]
    h = jnp.tanh(h @ weights["recur"] + weights["embed"][tokens])  # [rows, hidden]
    # [rows, vocab] --> [rows, 1, vocab] * [1, 2, 1] --> [rows, 2, vocab]
    counts = counts + jax.nn.one_hot(tokens, vocab)[:, None, :] * jnp.array([1.0, -1.0])[None, :, None]
    features = cache["encoder"]["features"]  # [rows, 3, 2]
    logits = (
      weights["table"][code]
      + h @ weights["out"]
      + 0.3 * counts[:, 0]
      - 0.2 * counts[:, 1]
      + features.reshape(features.shape[0], 6) @ weights["feature_out"]
    )  # [rows, 3, 2] --> [rows, 6]
    # The shared scalar leaf must never be expanded, gathered or desynchronised.
    logits = logits + jnp.where(cache["steps"] == position, 0.0, jnp.nan)
    new_cache = {"history": history, "rnn": (h, counts), "encoder": {"features": features}, "steps": cache["steps"] + 1}
    return logits, new_cache

  cache = {
    "history": np.zeros((batch, max_length + 1), np.int32),
    "rnn": (np.zeros((batch, hidden), np.float32), np.zeros((batch, 2, vocab), np.float32)),
    "encoder": {"features": rng.normal(size=(batch, 3, 2)).astype(np.float32)},
    "steps": 0,  # a Python int: weakly typed, which the searches must cope with
  }
  return step_fn, cache


def _jax_row_step(step_fn, cache, index):
  """A numpy-facing step for one example of a jax step function (for replays)."""
  example = jax.tree.map(lambda x: x if np.ndim(x) == 0 else x[index : index + 1], cache)
  state = {"cache": jax.tree.map(jnp.asarray, example)}
  jit_step = jax.jit(step_fn)

  def np_step(tokens, _, position):
    logits, state["cache"] = jit_step(jnp.asarray(tokens, jnp.int32), state["cache"], jnp.int32(position))
    return np.asarray(logits, np.float64), None

  return np_step


def test_beam_search_gathers_every_cache_leaf():
  vocab, max_length, batch, beam_size, pad_id = 5, 6, 2, 4, 8
  step_fn, cache = _history_model(seed=0, vocab=vocab, batch=batch, max_length=max_length)
  tokens, scores = decoding.beam_search(
    step_fn, cache, start_id=START, end_id=END, max_length=max_length, beam_size=beam_size, pad_id=pad_id
  )
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert np.all(np.isfinite(scores)), "the shared scalar leaf went out of step"
  _check_well_formed(tokens, pad_id)
  for b, k in itertools.product(range(batch), range(beam_size)):
    log_prob = _replay_log_probs(_jax_row_step(step_fn, cache, b), None, tokens[b, k])
    np.testing.assert_allclose(scores[b, k], log_prob, rtol=1e-5, atol=1e-5)


# A Markov model that cycles 2 -> 3 -> 4 -> 2 and hardly ever ends.


def _looping_model(seed: int, vocab: int, batch: int):
  rng = np.random.default_rng(seed)
  table = rng.normal(scale=0.5, size=(vocab, vocab))
  for token in (2, 3, 4):
    table[token, 2 + (token - 1) % 3] += 6.0
  table[START, 2] += 6.0
  table[:, END] -= 4.0
  table = table.astype(np.float32)
  cache = {"bias": rng.normal(scale=0.1, size=(batch, vocab)).astype(np.float32)}

  def step(xp, tokens, cache, position):
    del position
    return xp.asarray(table)[tokens] + cache["bias"], cache

  def np_step(tokens, cache, position):
    return step(np, np.asarray(tokens), cache, position)

  return functools.partial(step, jnp), np_step, cache


def _repeats_ngram(sequence, n: int) -> bool:
  ngrams = [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1)]
  return len(ngrams) != len(set(ngrams))


def test_trigram_blocking_stops_loops():
  vocab, max_length, batch, beam_size = 7, 12, 2, 3
  step_fn, np_step, cache = _looping_model(seed=0, vocab=vocab, batch=batch)
  options = dict(start_id=START, end_id=END, max_length=max_length)

  free_tokens, _ = decoding.greedy_search(step_fn, cache, **options)
  free_beams, _ = decoding.beam_search(step_fn, cache, beam_size=beam_size, **options)
  assert all(_repeats_ngram(row[:length], 3) for row, length in zip(np.asarray(free_tokens), _lengths(free_tokens))), (
    "the model must loop"
  )
  assert _repeats_ngram(np.asarray(free_beams)[0, 0], 3)

  greedy_tokens, greedy_log_probs = decoding.greedy_search(step_fn, cache, block_ngram_repeat=3, **options)
  beam_tokens, beam_scores = decoding.beam_search(step_fn, cache, beam_size=beam_size, block_ngram_repeat=3, **options)
  greedy_tokens, beam_tokens, beam_scores = map(np.asarray, (greedy_tokens, beam_tokens, beam_scores))
  for row, length in zip(beam_tokens.reshape(-1, max_length), _lengths(beam_tokens).reshape(-1)):
    assert not _repeats_ngram(row[:length], 3), row
  for b in range(batch):
    expected_tokens, expected_log_prob = _host_greedy(np_step, _example_cache(cache, b), max_length, 0, ngram=3)
    np.testing.assert_array_equal(greedy_tokens[b], expected_tokens)
    np.testing.assert_allclose(greedy_log_probs[b], expected_log_prob, rtol=1e-5)
    # Blocking removes candidates but leaves the survivors' log-probabilities alone.
    for k in range(beam_size):
      log_prob = _replay_log_probs(np_step, _example_cache(cache, b), beam_tokens[b, k])
      np.testing.assert_allclose(beam_scores[b, k], log_prob, rtol=1e-5)


def test_soft_ngram_penalty_matches_host_loop():
  vocab, max_length, batch = 7, 12, 2
  step_fn, np_step, cache = _looping_model(seed=1, vocab=vocab, batch=batch)
  penalty = 2 * np.log(0.5)
  tokens, log_probs = decoding.greedy_search(
    step_fn, cache, start_id=START, end_id=END, max_length=max_length, block_ngram_repeat=2, ngram_penalty=penalty
  )
  for b in range(batch):
    expected_tokens, expected_log_prob = _host_greedy(
      np_step, _example_cache(cache, b), max_length, 0, ngram=2, ngram_penalty=penalty
    )
    np.testing.assert_array_equal(np.asarray(tokens)[b], expected_tokens)
    np.testing.assert_allclose(np.asarray(log_probs)[b], expected_log_prob, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_repeat_counts_match_python(n):
  rng = np.random.default_rng(n)
  vocab, max_length, rows = 4, 10, 16
  sequences = rng.integers(0, vocab, size=(rows, max_length))
  repeat_counts = jax.jit(decoding._ngram_repeat_counts, static_argnums=(2, 3))
  for length in range(max_length + 1):
    counts = np.asarray(repeat_counts(jnp.asarray(sequences, jnp.int32), jnp.int32(length), n, vocab))
    for row, row_counts in zip(sequences, counts):
      prefix = row[:length]
      expected = np.zeros(vocab, np.int64)
      for token in range(vocab):
        candidate = list(prefix) + [token]
        last = tuple(candidate[-n:])
        expected[token] = sum(tuple(candidate[j : j + n]) == last for j in range(len(candidate) - n))
      np.testing.assert_array_equal(row_counts, expected, err_msg=f"n={n} length={length} row={row}")


def _counting(step_fn):
  """Wraps step_fn to count its executions (not traces) inside the loop."""
  calls = []

  def counted(tokens, cache, position):
    jax.debug.callback(lambda: calls.append(1))
    return step_fn(tokens, cache, position)

  def count():
    jax.effects_barrier()
    return len(calls)

  return counted, count


def test_end_token_stops_pads_and_exits_early():
  vocab, max_length, batch, pad_id = 6, 10, 3, 9
  step_fn, _, cache = _looping_model(seed=2, vocab=vocab, batch=batch)

  def ends_at_third(tokens, cache, position):
    logits, cache = step_fn(tokens, cache, position)
    return logits.at[:, END].add(jnp.where(position == 2, 100.0, 0.0)), cache

  options = dict(start_id=START, end_id=END, max_length=max_length, pad_id=pad_id)
  counted, count = _counting(ends_at_third)
  tokens, _ = decoding.greedy_search(counted, cache, **options)
  tokens = np.asarray(tokens)
  assert np.all(tokens[:, 2] == END) and np.all(tokens[:, 3:] == pad_id) and not np.any(tokens[:, :2] == END)
  assert count() == 3, "greedy search must stop once every sequence has ended"

  counted, count = _counting(ends_at_third)
  beam_tokens, beam_scores = decoding.beam_search(counted, cache, beam_size=3, **options)
  beam_tokens = np.asarray(beam_tokens)
  _check_well_formed(beam_tokens, pad_id)
  assert np.all(_lengths(beam_tokens) <= 3) and np.all(np.isfinite(np.asarray(beam_scores)))
  assert count() == 3, "no alive beam can beat the finished ones after position 2"

  # An end token that never wins: every sequence runs to max_length, unpadded.
  counted, count = _counting(step_fn)
  tokens, _ = decoding.greedy_search(counted, cache, **options)
  assert np.asarray(tokens).shape == (batch, max_length) and not np.any(np.asarray(tokens) == pad_id)
  assert np.all(_lengths(tokens) == max_length) and count() == max_length
  beam_tokens, beam_scores = decoding.beam_search(step_fn, cache, beam_size=3, length_penalty=0.6, **options)
  assert np.all(_lengths(beam_tokens) == max_length) and np.all(np.isfinite(np.asarray(beam_scores)))


def test_early_exit_waits_for_beams_the_length_penalty_can_lift():
  # From the start token, ending now is likelier (p = 2/3) than token 2, but
  # 2 leads with certainty to 2 3 4 2 3 <end>, whose score the length penalty
  # (alpha = 2) lifts above that of ending now: an alive beam whose log-prob
  # is below the worst finished score can still win, so the search must go on.
  vocab, max_length, alpha = 5, 6, 2.0
  table = np.full((vocab, vocab), -50.0, np.float32)
  table[START, END], table[START, 2] = np.log(2 / 3), np.log(1 / 3)
  table[2, 3] = table[3, 4] = table[4, 2] = 0.0

  def step_fn(tokens, cache, position):
    logits = jnp.asarray(table)[tokens] + cache["bias"]
    return logits.at[:, END].add(jnp.where(position == max_length - 1, 100.0, 0.0)), cache

  cache = {"bias": np.zeros((2, vocab), np.float32)}
  tokens, scores = decoding.beam_search(
    step_fn, cache, start_id=START, end_id=END, max_length=max_length, beam_size=1, length_penalty=alpha
  )
  np.testing.assert_array_equal(np.asarray(tokens)[:, 0], [[2, 3, 4, 2, 3, END]] * 2)
  np.testing.assert_allclose(np.asarray(scores)[:, 0], np.log(1 / 3) / _penalty(max_length, alpha), rtol=1e-4)
  assert np.log(1 / 3) / _penalty(max_length, alpha) > np.log(2 / 3) / _penalty(1, alpha)


def test_searches_trace_inside_jit_and_jit_search_reuses_compilation():
  vocab, max_length, batch, beam_size = 6, 7, 3, 2
  params, cache, end_slope = _make_gru(seed=5, vocab=vocab, batch=batch, end_slope=0.5)
  options = dict(start_id=START, end_id=END, max_length=max_length)

  def param_step(params, tokens, cache, position):
    return _gru_step(jnp, params, end_slope, tokens, cache, position)

  @jax.jit
  def generate(params, cache):
    step_fn = functools.partial(param_step, params)  # closes over traced parameters
    return (
      decoding.greedy_search(step_fn, cache, **options),
      decoding.beam_search(step_fn, cache, beam_size=beam_size, length_penalty=0.6, **options),
    )

  jax_params = jax.tree.map(jnp.asarray, params)
  (greedy_tokens, greedy_log_probs), (beam_tokens, beam_scores) = generate(jax_params, cache)
  assert greedy_tokens.shape == (batch, max_length) and beam_tokens.shape == (batch, beam_size, max_length)
  # Not jitted by the caller: the loop still compiles on its own.
  eager_tokens, eager_log_probs = decoding.greedy_search(_jax_gru(params, end_slope), cache, **options)
  np.testing.assert_array_equal(greedy_tokens, eager_tokens)
  np.testing.assert_allclose(greedy_log_probs, eager_log_probs, rtol=1e-6)

  traces = []

  def traced_step(params, tokens, cache, position):
    traces.append(1)
    return param_step(params, tokens, cache, position)

  decode = decoding.jit_search(decoding.beam_search, traced_step, beam_size=beam_size, length_penalty=0.6, **options)
  tokens, scores = decode(jax_params, cache)
  np.testing.assert_array_equal(tokens, beam_tokens)
  np.testing.assert_allclose(scores, beam_scores, rtol=1e-6)
  other_params, _, _ = _make_gru(seed=6, vocab=vocab, batch=batch)
  other_tokens, other_scores = map(np.asarray, decode(jax.tree.map(jnp.asarray, other_params), cache))
  assert len(traces) == 1, "new parameters must reuse the compiled search"
  assert not np.array_equal(other_tokens, tokens), "other parameters should decode differently"
  np_step = _numpy_gru(other_params, end_slope)
  for b, k in itertools.product(range(batch), range(beam_size)):
    length = _lengths(other_tokens[b, k])
    log_prob = _replay_log_probs(np_step, _example_cache(cache, b), other_tokens[b, k])
    np.testing.assert_allclose(other_scores[b, k], log_prob / _penalty(length, 0.6), rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_clear_errors():
  params, cache, end_slope = _make_gru(seed=0, vocab=4, batch=2)
  step_fn = _jax_gru(params, end_slope)
  options = dict(start_id=START, end_id=END, max_length=4)
  with pytest.raises(ValueError, match=r"\['features'\].*batch size 3"):
    decoding.greedy_search(step_fn, cache, batch_size=3, **options)
  with pytest.raises(ValueError, match="beam_size"):
    decoding.beam_search(step_fn, cache, beam_size=0, **options)
  with pytest.raises(ValueError, match="length_penalty"):
    decoding.beam_search(step_fn, cache, beam_size=2, length_penalty=-0.5, **options)
  with pytest.raises(ValueError, match="ngram_penalty"):
    decoding.greedy_search(step_fn, cache, block_ngram_repeat=3, ngram_penalty=1.0, **options)
  with pytest.raises(ValueError, match=r"logits \[rows=2, vocab\]"):
    decoding.greedy_search(lambda t, c, p: (step_fn(t, c, p)[0][0], c), cache, **options)
  with pytest.raises(ValueError, match=r"cache leaf \['h'\]"):
    decoding.greedy_search(lambda t, c, p: (step_fn(t, c, p)[0], {**c, "h": c["h"][:, :2]}), cache, **options)
  with pytest.raises(ValueError, match="no array with a batch dimension"):
    decoding.greedy_search(lambda t, c, p: (jnp.zeros((1, 4)), c), {}, **options)


# transformers' beam search (length_normalization="hf") and greedy search, against `generate` itself.
# A tiny random GPT-2 is the model of both: the JAX step function keeps the token prefix in its cache
# and asks the torch model (through jax.pure_callback) for the next-token logits, so the two sides see
# the same distributions and only the search logic is compared.

HF_VOCAB, HF_START, HF_END, HF_PAD, HF_PROMPT = 20, 1, 2, 0, 4


@pytest.fixture(scope="module")
def tiny_gpt2():
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    n_layer=1,
    n_head=2,
    n_embd=16,
    vocab_size=HF_VOCAB,
    n_positions=32,
    initializer_range=0.3,
    bos_token_id=HF_START,
    eos_token_id=HF_END,
    pad_token_id=HF_PAD,
  )
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    # Point the end token's (tied) embedding along the mean final hidden state, so that ending is
    # likely but context-dependent: pooled hypotheses end at different steps, some run to the limit.
    tokens = torch.randint(3, HF_VOCAB, (64, 10), generator=torch.Generator().manual_seed(1))
    direction = model.transformer(tokens).last_hidden_state.reshape(-1, 16).mean(0)
    model.transformer.wte.weight[HF_END] = 0.7 * direction / direction.norm()
  return torch, model


def _torch_step_fn(torch, model):
  """A step function whose cache is the token prefix [rows, prompt + max_length]."""

  def next_logits(prefix, position):
    with torch.no_grad():
      inputs = torch.tensor(np.asarray(prefix)[:, : HF_PROMPT + int(position)], dtype=torch.long)
      return model(inputs).logits[:, -1].float().numpy()

  def step_fn(params, tokens, cache, position):
    del params
    prefix = cache["prefix"].at[:, HF_PROMPT - 1 + position].set(tokens)
    logits = jax.pure_callback(
      next_logits,
      jax.ShapeDtypeStruct((prefix.shape[0], HF_VOCAB), jnp.float32),
      prefix,
      position,
      vmap_method="sequential",
    )
    return logits, {"prefix": prefix}

  return step_fn


def _prompts(seed: int, batch: int) -> np.ndarray:
  """Random prompts [batch, HF_PROMPT] ending with the start token (the token our searches feed first)."""
  prompts = np.random.default_rng(seed).integers(3, HF_VOCAB, size=(batch, HF_PROMPT))
  prompts[:, -1] = HF_START
  return prompts


def _hf_generate(torch, model, prompts, max_new_tokens, **options):
  with torch.no_grad():
    out = model.generate(
      torch.tensor(prompts),
      attention_mask=torch.ones(prompts.shape, dtype=torch.long),
      max_new_tokens=max_new_tokens,
      do_sample=False,
      eos_token_id=HF_END,
      pad_token_id=HF_PAD,
      output_scores=True,
      return_dict_in_generate=True,
      use_cache=False,
      **options,
    )
  return out, out.sequences[:, HF_PROMPT:].numpy()


def _trim(row, max_length: int) -> list[int]:
  """Generated ids up to and including the first end token."""
  row = [int(t) for t in row[:max_length]]
  return row[: row.index(HF_END) + 1] if HF_END in row else row


HF_BEAM_CASES = [(3, 1.0, 8, 0), (2, 1.0, 10, 1), (3, 2.0, 7, 2), (4, 0.5, 8, 3), (3, 0.0, 6, 4), (2, -0.5, 8, 5)]
HF_BEAM_BATCH = 16


@pytest.mark.parametrize("beam_size,length_penalty,max_length,seed", HF_BEAM_CASES)
def test_hf_beam_search_matches_transformers_generate(tiny_gpt2, beam_size, length_penalty, max_length, seed):
  """The whole pool (num_return_sequences=beams): ids, sequences_scores and each token's log-probability."""
  torch, model = tiny_gpt2
  batch = HF_BEAM_BATCH
  prompts = _prompts(seed, batch)
  out, expected = _hf_generate(
    torch,
    model,
    prompts,
    max_length,
    num_beams=beam_size,
    num_return_sequences=beam_size,
    length_penalty=length_penalty,
  )
  expected = expected.reshape(batch, beam_size, -1)
  expected_scores = out.sequences_scores.numpy().reshape(batch, beam_size)
  # Each token's log-probability as transformers reports it (compute_transition_scores along its beams).
  transition = (
    model.compute_transition_scores(out.sequences, out.scores, out.beam_indices, normalize_logits=False)
    .numpy()
    .reshape(batch, beam_size, -1)
  )
  calls = []
  torch_step = _torch_step_fn(torch, model)

  def counted_step(params, tokens, cache, position):
    jax.debug.callback(lambda: calls.append(1))
    return torch_step(params, tokens, cache, position)

  search = decoding.jit_search(
    decoding.beam_search,
    counted_step,
    start_id=HF_START,
    end_id=HF_END,
    pad_id=HF_PAD,
    max_length=max_length,
    beam_size=beam_size,
    length_penalty=length_penalty,
    length_normalization="hf",
    return_token_log_probs=True,
  )
  cache = {"prefix": np.concatenate([prompts, np.full((batch, max_length), HF_PAD)], axis=1).astype(np.int32)}
  tokens, scores, token_log_probs = map(np.asarray, search(None, cache))
  jax.effects_barrier()
  lengths = np.zeros((batch, beam_size), np.int64)
  for b, k in itertools.product(range(batch), range(beam_size)):
    ours, theirs = _trim(tokens[b, k], max_length), _trim(expected[b, k], max_length)
    assert ours == theirs, f"example {b} beam {k}: {ours} != transformers' {theirs}"
    lengths[b, k] = len(ours)
    np.testing.assert_allclose(token_log_probs[b, k, : len(ours)], transition[b, k, : len(ours)], atol=2e-5)
    assert np.all(token_log_probs[b, k, len(ours) :] == 0)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scores, token_log_probs.sum(-1) / np.power(lengths, length_penalty), rtol=1e-5, atol=1e-5)


def test_hf_beam_search_comparisons_cover_every_case(tiny_gpt2):
  """The comparisons above meant something: transformers' pools for their cases (which those tests
  require ours to equal) hold hypotheses that ended at the first step, later, and that max_length cut."""
  torch, model = tiny_gpt2
  lengths, cut = [], []
  for beam_size, length_penalty, max_length, seed in HF_BEAM_CASES:
    _, expected = _hf_generate(
      torch,
      model,
      _prompts(seed, HF_BEAM_BATCH),
      max_length,
      num_beams=beam_size,
      num_return_sequences=beam_size,
      length_penalty=length_penalty,
    )
    pool_lengths = np.array([len(_trim(row, max_length)) for row in expected])
    lengths.append(pool_lengths)
    cut.append(np.array([HF_END not in _trim(row, max_length) for row in expected]))
  lengths, cut = np.concatenate(lengths), np.concatenate(cut)
  assert np.any(lengths == 1) and np.any((lengths > 1) & ~cut) and np.any(cut)


def test_hf_beam_search_stops_rows_as_transformers_does(tiny_gpt2):
  """A row whose pool closed takes no more hypotheses while the others run on (rows close at different
  steps here), and the loop ends once every row's pool has closed."""
  torch, model = tiny_gpt2
  max_length, beam_size, batch = 12, 2, 8
  step = _torch_step_fn(torch, model)
  calls = []

  def counted_step(params, tokens, cache, position):
    jax.debug.callback(lambda: calls.append(1))
    return step(params, tokens, cache, position)

  for length_penalty, seed in ((1.0, 6), (0.0, 7)):
    search = decoding.jit_search(
      decoding.beam_search,
      counted_step,
      start_id=HF_START,
      end_id=HF_END,
      pad_id=HF_PAD,
      max_length=max_length,
      beam_size=beam_size,
      length_penalty=length_penalty,
      length_normalization="hf",
    )
    prompts = _prompts(seed, batch)
    out, expected = _hf_generate(
      torch,
      model,
      prompts,
      max_length,
      num_beams=beam_size,
      length_penalty=length_penalty,
      num_return_sequences=beam_size,
    )
    expected = expected.reshape(batch, beam_size, -1)
    expected_scores = out.sequences_scores.numpy().reshape(batch, beam_size)
    pool_lengths = np.array([[len(_trim(row, max_length)) for row in rows] for rows in expected])
    # Then only the rows whose pools closed early: transformers' results do not depend on the other
    # rows, and the search must now stop early.
    short = np.flatnonzero(pool_lengths.max(axis=1) < max_length)
    assert 0 < len(short) < batch
    for rows in (np.arange(batch), short):
      cache = {
        "prefix": np.concatenate([prompts[rows], np.full((len(rows), max_length), HF_PAD)], axis=1).astype(np.int32)
      }
      calls.clear()
      tokens, scores = map(np.asarray, search(None, cache))
      jax.effects_barrier()
      for index, b in enumerate(rows):
        for k in range(beam_size):
          assert _trim(tokens[index, k], max_length) == _trim(expected[b, k], max_length), (seed, b, k)
      np.testing.assert_allclose(scores, expected_scores[rows], rtol=1e-5, atol=1e-5)
    assert len(calls) <= pool_lengths[short].max() + 1 < max_length


def test_greedy_search_matches_transformers_generate(tiny_gpt2):
  torch, model = tiny_gpt2
  batch, max_length = 16, 8
  prompts = _prompts(11, batch)
  out, expected = _hf_generate(torch, model, prompts, max_length, num_beams=1)
  cache = {"prefix": np.concatenate([prompts, np.full((batch, max_length), HF_PAD)], axis=1).astype(np.int32)}
  tokens, log_probs, token_log_probs = map(
    np.asarray,
    decoding.greedy_search(
      functools.partial(_torch_step_fn(torch, model), None),
      cache,
      start_id=HF_START,
      end_id=HF_END,
      pad_id=HF_PAD,
      max_length=max_length,
      return_token_log_probs=True,
    ),
  )
  transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).numpy()
  lengths = []
  for b in range(batch):
    ours, theirs = _trim(tokens[b], max_length), _trim(expected[b], max_length)
    assert ours == theirs, f"example {b}"
    lengths.append(len(ours))
    np.testing.assert_allclose(token_log_probs[b, : len(ours)], transition[b, : len(ours)], atol=2e-5)
  np.testing.assert_allclose(log_probs, token_log_probs.sum(-1), rtol=1e-5, atol=1e-5)
  assert min(lengths) < max_length and max(lengths) == max_length, lengths


def test_shared_cache_entries_are_never_expanded_or_gathered():
  """A `Shared` entry (read-only, alike in every beam) gives the same search as a plain one, and reaches
  step_fn with its [batch, ...] rows, row b serving beams b * beams + k."""
  rng = np.random.default_rng(0)
  batch, vocab, beams = 3, 7, 3
  table = jnp.asarray(rng.normal(size=(batch, vocab, vocab)).astype(np.float32) * 3)
  seen_shapes = []

  def step_fn(tokens, cache, position):
    memory = decoding.shared_value(cache["memory"])  # [rows or batch, vocab, vocab]: each example's table
    seen_shapes.append(memory.shape)
    memory = jnp.repeat(memory, tokens.shape[0] // memory.shape[0], axis=0)  # [rows, vocab, vocab]
    logits = jnp.take_along_axis(memory, tokens[:, None, None], axis=1)[:, 0] + cache["bias"]
    return logits, dict(cache, bias=cache["bias"] * 0.5)

  options = dict(start_id=0, end_id=1, max_length=6, beam_size=beams)
  plain = {"memory": table, "bias": jnp.zeros((batch, vocab))}
  shared = {"memory": decoding.Shared(table), "bias": jnp.zeros((batch, vocab))}
  tokens, scores = decoding.beam_search(step_fn, plain, **options)
  shared_tokens, shared_scores = decoding.beam_search(step_fn, shared, **options)
  np.testing.assert_array_equal(shared_tokens, tokens)
  np.testing.assert_allclose(shared_scores, scores, rtol=1e-6)
  assert seen_shapes[-1] == (batch, vocab, vocab)
  greedy, _ = decoding.greedy_search(step_fn, shared, start_id=0, end_id=1, max_length=6)
  np.testing.assert_array_equal(greedy, decoding.greedy_search(step_fn, plain, start_id=0, end_id=1, max_length=6)[0])


@pytest.mark.parametrize("groups", [1, 3])
def test_grouped_attention_equals_attention_over_repeated_keys(groups):
  """attention_scores / attention_context with key rows shared by `groups` query rows equal the plain
  products over keys repeated to every query row (what beam search did before Shared entries)."""
  rng = np.random.default_rng(1)
  queries = jnp.asarray(rng.normal(size=(2 * groups, 4, 3, 5)), jnp.float32)  # [rows, heads, q, d]
  keys = jnp.asarray(rng.normal(size=(2, 4, 7, 5)), jnp.float32)  # [key_rows, heads, k, d]
  values = jnp.asarray(rng.normal(size=(2, 4, 7, 5)), jnp.float32)
  repeated_keys, repeated_values = jnp.repeat(keys, groups, axis=0), jnp.repeat(values, groups, axis=0)
  scores = decoding.attention_scores(queries, keys)
  np.testing.assert_allclose(scores, jnp.einsum("bhqd,bhkd->bhqk", queries, repeated_keys), rtol=1e-5, atol=1e-5)
  weights = jax.nn.softmax(scores, axis=-1)
  np.testing.assert_allclose(
    decoding.attention_context(weights, values),
    jnp.einsum("bhqk,bhkd->bhqd", weights, repeated_values),
    rtol=1e-5,
    atol=1e-5,
  )
