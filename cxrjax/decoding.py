"""Greedy and beam search over a batch, generic over a decoder step function.

Both searches are one `jax.lax.while_loop` each, so they trace inside a caller's
`jax.jit` (the usual case: an evaluation step that encodes images, then
decodes) or run on their own. They serve recurrent decoders (the cache is the
LSTM/GRU state plus encoder features) and transformer decoders (the cache is
the KV cache) alike, through one step function:

  step_fn(tokens, cache, position) -> (logits, new_cache)
    tokens:    int32 [rows], the token fed at `position` (the start token at 0).
    cache:     any pytree; every non-scalar leaf has leading dimension `rows`.
               Scalar leaves (e.g. a flax attention `cache_index`) are shared
               by all rows and never expanded or gathered, which is right
               because every row advances in lockstep.
    position:  int32 scalar, the index of `tokens` in the full sequence
               (0 = start token), so also the number of tokens generated so far.
    logits:    float [rows, vocab], the distribution of the next token.
    new_cache: same structure, shapes and dtypes as `cache`.

`rows` is `batch` for greedy search and `batch * beams` for beam search, where
row `b * beams + k` is beam `k` of example `b`.

Returned sequences exclude the start token: `tokens[..., t]` is the token
generated at step `t`, so a sequence holds at most `max_length` tokens counting
the end token. After the first `end_id` every position holds `pad_id`; a
sequence that never produced `end_id` is `max_length` tokens long (truncated).

Beam search follows flax's `examples/wmt/decode.py`: alive and finished beams,
top-2k candidates so that k alive beams survive even when k candidates finish
at once, GNMT length penalty, and early exit once no alive beam can beat the
worst finished one. It differs in four ways:
  * a candidate that ends is kept only if it ranks among the k best of its
    step, as in textbook beam search and Hugging Face's (flax keeps ended ones
    from all 2k), so beam_size=1 is exactly greedy search;
  * empty slots hold -inf instead of a large negative constant plus a flag
    array, so a slot that never held a real hypothesis cannot pass for one;
  * beams are kept best first;
  * beams still alive at `max_length` compete with finished ones as truncated
    hypotheses, instead of being returned only when nothing finished.
"""

import functools
from typing import Any, Callable

import flax
import jax
from jax import lax
import jax.numpy as jnp

Cache = Any  # a pytree of arrays
StepFn = Callable[[jax.Array, Cache, jax.Array], tuple[jax.Array, Cache]]

_NEG_INF = float("-inf")


def sequence_lengths(tokens: jax.Array, end_id: int) -> jax.Array:
  """Tokens up to and including the first `end_id`.

  Args:
    tokens: int32 [..., max_length] as returned by the searches.
    end_id: end-of-sequence token id.

  Returns:
    int32 [...]; `max_length` for truncated sequences (no `end_id`).
  """
  max_length = tokens.shape[-1]
  is_end = tokens == end_id
  first_end = jnp.argmax(is_end, axis=-1)
  return jnp.where(jnp.any(is_end, axis=-1), first_end + 1, max_length).astype(jnp.int32)


def _length_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha; 1 when alpha is 0."""
  return jnp.power((5.0 + length) / 6.0, alpha)


def _batch_size_of(init_cache: Cache, batch_size: int | None) -> int:
  """Checks that every non-scalar cache leaf has leading dimension batch_size."""
  leaves = jax.tree_util.tree_leaves_with_path(init_cache)
  batched = [(path, leaf) for path, leaf in leaves if jnp.ndim(leaf) > 0]
  if batch_size is None:
    if not batched:
      raise ValueError("init_cache has no array with a batch dimension: pass batch_size explicitly")
    batch_size = jnp.shape(batched[0][1])[0]
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  for path, leaf in batched:
    if jnp.shape(leaf)[0] != batch_size:
      raise ValueError(f"init_cache leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; "
                       f"its leading dimension must be the batch size {batch_size}")
  return batch_size


def _as_arrays(cache: Cache) -> Cache:
  # Strong dtypes: a weakly typed leaf (a Python float) would change type when
  # step_fn returns it, which lax.while_loop rejects.
  return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), cache)


def _call_step(step_fn: StepFn, tokens: jax.Array, cache: Cache, position: jax.Array) -> tuple[jax.Array, Cache]:
  """Calls step_fn and checks its outputs; returns float32 log-probabilities."""
  rows = tokens.shape[0]
  logits, new_cache = step_fn(tokens, cache, position)
  if logits.ndim != 2 or logits.shape[0] != rows:
    raise ValueError(f"step_fn must return logits [rows={rows}, vocab], got shape {logits.shape}")
  if logits.shape[1] < 2:
    raise ValueError(f"vocabulary must hold at least 2 tokens, got logits shape {logits.shape}")
  old_leaves, old_tree = jax.tree_util.tree_flatten_with_path(cache)
  new_leaves, new_tree = jax.tree_util.tree_flatten(new_cache)
  if old_tree != new_tree:
    raise ValueError(f"step_fn changed the cache structure: {old_tree} -> {new_tree}")
  for (path, old), new in zip(old_leaves, new_leaves):
    if old.shape != new.shape or old.dtype != new.dtype:
      raise ValueError(f"step_fn changed cache leaf {jax.tree_util.keystr(path)} from "
                       f"{old.dtype}{list(old.shape)} to {new.dtype}{list(new.shape)}")
  new_cache = jax.tree.map(lambda old, new: new.astype(old.dtype), cache, new_cache)  # drops weak types
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), new_cache


def _ngram_repeat_counts(sequences: jax.Array, length: jax.Array, n: int, vocab_size: int) -> jax.Array:
  """For each next token, how often it would repeat an n-gram of its own row.

  Appending token v to row r repeats an n-gram when the last n - 1 tokens of r
  followed by v already occur in r; the count is the number of occurrences.

  Args:
    sequences: int32 [rows, max_length] generated tokens; positions >= length
      are ignored.
    length: int32 scalar, number of tokens generated so far (all rows).
    n: n-gram order (3 blocks repeated trigrams).
    vocab_size: number of tokens.

  Returns:
    int32 [rows, vocab_size].
  """
  rows, max_length = sequences.shape
  num_windows = max_length - n + 1
  counts = jnp.zeros((rows, vocab_size), jnp.int32)
  if num_windows <= 0:
    return counts
  starts = jnp.arange(num_windows)
  # [rows, windows, n]: every n-gram of every row, complete or not yet written.
  windows = sequences[:, starts[:, None] + jnp.arange(n)[None, :]]
  # [rows, n - 1]; when length < n - 1 the slice start is clamped, and no
  # window passes the `starts` test below anyway.
  suffix = lax.dynamic_slice_in_dim(sequences, length - (n - 1), n - 1, axis=1)
  # [rows, windows]: window complete (ends before `length`) and its first
  # n - 1 tokens equal the current suffix.
  seen = jnp.all(windows[:, :, :-1] == suffix[:, None, :], axis=-1) & (starts <= length - n)[None, :]
  # [rows, windows]: the token that followed; vocab_size (out of range) is dropped.
  followers = jnp.where(seen, windows[:, :, -1], vocab_size)
  return counts.at[jnp.arange(rows)[:, None], followers].add(1, mode="drop")


def _penalize_repeats(log_probs: jax.Array, sequences: jax.Array, length: jax.Array, n: int,
                      penalty: float | None) -> jax.Array:
  """Blocks (penalty None) or penalizes candidates that repeat an n-gram.

  Args:
    log_probs: float32 [rows, vocab].
    sequences: int32 [rows, max_length] generated tokens so far.
    length: int32 scalar, tokens generated so far.
    n: n-gram order; 0 disables.
    penalty: None sets repeating candidates to -inf; a float <= 0 is added once
      per earlier occurrence of the n-gram.
  """
  if n == 0:
    return log_probs
  counts = _ngram_repeat_counts(sequences, length, n, log_probs.shape[-1])
  if penalty is None:
    return jnp.where(counts > 0, _NEG_INF, log_probs)
  return log_probs + penalty * counts


def _check_options(max_length: int, block_ngram_repeat: int, ngram_penalty: float | None) -> None:
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  if block_ngram_repeat < 0:
    raise ValueError(f"block_ngram_repeat must be >= 0 (0 disables), got {block_ngram_repeat}")
  if ngram_penalty is not None and not ngram_penalty <= 0:
    # A positive penalty would let log-probabilities grow, which the early exit
    # of beam search assumes they never do.
    raise ValueError(f"ngram_penalty must be None (block) or <= 0, got {ngram_penalty}")


# Greedy search.


@flax.struct.dataclass
class GreedyState:
  """Loop state of greedy search."""
  position: jax.Array  # int32 scalar: tokens generated so far
  last_tokens: jax.Array  # int32 [batch]: token fed next
  tokens: jax.Array  # int32 [batch, max_length]: generated tokens, pad_id after end
  log_probs: jax.Array  # float32 [batch]: sum of the generated tokens' log-probabilities
  finished: jax.Array  # bool [batch]: end_id generated
  cache: Cache  # leaves [batch, ...]


def greedy_search(step_fn: StepFn,
                  init_cache: Cache,
                  *,
                  start_id: int,
                  end_id: int,
                  max_length: int,
                  batch_size: int | None = None,
                  pad_id: int = 0,
                  block_ngram_repeat: int = 0,
                  ngram_penalty: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy decoding of a batch in one `lax.while_loop`.

  Args:
    step_fn: `(tokens [batch], cache, position) -> (logits [batch, vocab], cache)`;
      see the module docstring.
    init_cache: pytree whose non-scalar leaves are [batch, ...].
    start_id: token fed at position 0 (not part of the output).
    end_id: end-of-sequence token; generated, kept, and followed by pad_id.
    max_length: most tokens generated, end token included.
    batch_size: inferred from init_cache when None.
    pad_id: fills positions after the end token.
    block_ngram_repeat: n > 0 forbids a token that would repeat an n-gram
      already in the sequence (3 = trigram blocking); 0 disables.
    ngram_penalty: None blocks such tokens (-inf); a float <= 0 is instead
      added to their log-probability once per earlier occurrence (the captioning
      codebase R2GenCMN builds on uses 2 * ln(1/2)).

  Returns:
    tokens: int32 [batch, max_length], start token excluded, pad_id after end.
    log_probs: float32 [batch], sum of the log-probabilities (after any n-gram
      penalty) of the generated tokens, end token included.
  """
  _check_options(max_length, block_ngram_repeat, ngram_penalty)
  batch_size = _batch_size_of(init_cache, batch_size)
  init_state = GreedyState(
      position=jnp.array(0, jnp.int32),
      last_tokens=jnp.full((batch_size,), start_id, jnp.int32),
      tokens=jnp.full((batch_size, max_length), pad_id, jnp.int32),
      log_probs=jnp.zeros((batch_size,), jnp.float32),
      finished=jnp.zeros((batch_size,), jnp.bool_),
      cache=_as_arrays(init_cache))

  def cond_fn(state: GreedyState) -> jax.Array:
    return (state.position < max_length) & ~jnp.all(state.finished)

  def body_fn(state: GreedyState) -> GreedyState:
    # --> [batch, vocab]
    log_probs, cache = _call_step(step_fn, state.last_tokens, state.cache, state.position)
    log_probs = _penalize_repeats(log_probs, state.tokens, state.position, block_ngram_repeat, ngram_penalty)
    next_tokens = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [batch]
    # [batch, 1] --> [batch]
    next_log_probs = jnp.take_along_axis(log_probs, next_tokens[:, None], axis=-1)[:, 0]
    next_tokens = jnp.where(state.finished, pad_id, next_tokens)
    # [batch] --> [batch, 1] written at column `position`.
    tokens = lax.dynamic_update_slice_in_dim(state.tokens, next_tokens[:, None], state.position, axis=1)
    return GreedyState(
        position=state.position + 1,
        last_tokens=next_tokens,
        tokens=tokens,
        log_probs=state.log_probs + jnp.where(state.finished, 0.0, next_log_probs),
        finished=state.finished | (next_tokens == end_id),
        cache=cache)

  final_state = lax.while_loop(cond_fn, body_fn, init_state)
  return final_state.tokens, final_state.log_probs


# Beam search.


def gather_beams(tree: Any, beam_indices: jax.Array) -> Any:
  """Selects beams of every leaf: [batch, old_beams, ...] -> [batch, new_beams, ...].

  Args:
    tree: pytree of arrays [batch, old_beams, ...]; scalar leaves pass through.
    beam_indices: int32 [batch, new_beams], indices into old_beams.
  """
  # [batch, 1], broadcast against [batch, new_beams].
  batch_indices = jnp.arange(beam_indices.shape[0])[:, None]
  return jax.tree.map(lambda x: x if x.ndim == 0 else x[batch_indices, beam_indices], tree)


def _expand_beams(cache: Cache, beam_size: int) -> Cache:
  """[batch, ...] -> [batch * beams, ...], each example repeated beam_size times."""
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0), cache)


def _gather_flat_beams(cache: Cache, beam_indices: jax.Array) -> Cache:
  """Selects beams of a flat cache: [batch * beams, ...] -> [batch * beams, ...]."""
  batch_size, beam_size = beam_indices.shape

  def gather_fn(x: jax.Array) -> jax.Array:
    if x.ndim == 0:
      return x
    beams = x.reshape((batch_size, beam_size) + x.shape[1:])  # [batch * beams, ...] --> [batch, beams, ...]
    beams = gather_beams(beams, beam_indices)  # --> [batch, beams, ...]
    return beams.reshape(x.shape)  # --> [batch * beams, ...]

  return jax.tree.map(gather_fn, cache)


def _top_beams(scores: jax.Array, tokens: jax.Array, beam_size: int) -> tuple[jax.Array, jax.Array]:
  """Keeps the best beam_size of [batch, n] scores and [batch, n, length] tokens, best first."""
  top_scores, top_indices = lax.top_k(scores, k=beam_size)  # --> [batch, beams]
  return top_scores, gather_beams(tokens, top_indices)  # --> [batch, beams, length]


@flax.struct.dataclass
class BeamState:
  """Loop state of beam search. Slots holding no hypothesis score -inf."""
  position: jax.Array  # int32 scalar: tokens generated so far
  # Alive (unfinished) hypotheses, best first, with their log-probabilities.
  live_log_probs: jax.Array  # float32 [batch, beams]
  live_tokens: jax.Array  # int32 [batch, beams, max_length]
  # Finished hypotheses (end token generated), best first, with their
  # length-penalized scores.
  finished_scores: jax.Array  # float32 [batch, beams]
  finished_tokens: jax.Array  # int32 [batch, beams, max_length]
  # Decoder cache of the alive beams, flat as step_fn sees it.
  cache: Cache  # leaves [batch * beams, ...]


def beam_search(step_fn: StepFn,
                init_cache: Cache,
                *,
                start_id: int,
                end_id: int,
                max_length: int,
                beam_size: int,
                length_penalty: float = 0.0,
                batch_size: int | None = None,
                pad_id: int = 0,
                block_ngram_repeat: int = 0,
                ngram_penalty: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Beam search over a batch in one `lax.while_loop`.

  The cache is expanded to [batch * beams, ...] once and re-gathered by the
  parent beam of every surviving hypothesis at every step.

  Args:
    step_fn: `(tokens [batch * beams], cache, position) -> (logits [batch * beams,
      vocab], cache)`; see the module docstring.
    init_cache: pytree whose non-scalar leaves are [batch, ...].
    start_id: token fed at position 0 (not part of the output).
    end_id: end-of-sequence token; generated, kept, and followed by pad_id.
    max_length: most tokens generated, end token included.
    beam_size: hypotheses kept per example.
    length_penalty: alpha of the GNMT penalty: a hypothesis of `length` tokens
      (end token included) scores log_prob / ((5 + length) / 6) ** alpha. 0
      ranks by plain log-probability; must be >= 0 for the early exit to hold.
    batch_size: inferred from init_cache when None.
    pad_id: fills positions after the end token, and empty slots.
    block_ngram_repeat: n > 0 forbids a token that would repeat an n-gram
      already in that beam's sequence (3 = trigram blocking); 0 disables.
    ngram_penalty: None blocks such tokens (-inf); a float <= 0 is instead
      added to their log-probability once per earlier occurrence.

  Returns:
    tokens: int32 [batch, beams, max_length], best first, start token
      excluded, pad_id after the end token. Hypotheses still alive at
      max_length compete as truncated sequences (no end token).
    scores: float32 [batch, beams], length-penalized log-probabilities;
      -inf (with all-pad tokens) for slots left empty because fewer than
      beam_size sequences exist.
  """
  _check_options(max_length, block_ngram_repeat, ngram_penalty)
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  if not length_penalty >= 0:
    raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
  batch_size = _batch_size_of(init_cache, batch_size)
  rows = batch_size * beam_size
  # Alive log-probabilities only fall and the penalty only grows with length,
  # so an alive beam can at best score this much divided into its log-prob.
  max_penalty = _length_penalty(max_length, length_penalty)

  init_state = BeamState(
      position=jnp.array(0, jnp.int32),
      # Only beam 0 starts alive, so the first step does not pick one
      # continuation beam_size times.
      live_log_probs=jnp.tile(jnp.array([0.0] + [_NEG_INF] * (beam_size - 1), jnp.float32), (batch_size, 1)),
      live_tokens=jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32),
      finished_scores=jnp.full((batch_size, beam_size), _NEG_INF, jnp.float32),
      finished_tokens=jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32),
      cache=_expand_beams(_as_arrays(init_cache), beam_size))

  def cond_fn(state: BeamState) -> jax.Array:
    best_possible = state.live_log_probs[:, 0] / max_penalty  # [batch]
    worst_finished = state.finished_scores[:, -1]  # [batch], -inf until all slots are filled
    done = (worst_finished > best_possible) | (state.live_log_probs[:, 0] == _NEG_INF)
    return (state.position < max_length) & ~jnp.all(done)

  def body_fn(state: BeamState) -> BeamState:
    position = state.position
    # Token fed to each beam: the start token, then the last one generated.
    # [batch, beams, max_length] --> [batch, beams]
    last_tokens = lax.dynamic_index_in_dim(state.live_tokens, jnp.maximum(position - 1, 0), axis=2, keepdims=False)
    last_tokens = jnp.where(position == 0, start_id, last_tokens)
    # --> [batch * beams, vocab]
    flat_log_probs, flat_cache = _call_step(step_fn, last_tokens.reshape(rows), state.cache, position)
    vocab_size = flat_log_probs.shape[-1]
    flat_log_probs = _penalize_repeats(
        flat_log_probs,
        state.live_tokens.reshape(rows, max_length),  # [batch, beams, max_length] --> [batch * beams, max_length]
        position, block_ngram_repeat, ngram_penalty)
    # [batch * beams, vocab] --> [batch, beams, vocab]
    log_probs = flat_log_probs.reshape(batch_size, beam_size, vocab_size) + state.live_log_probs[:, :, None]

    # Top 2k of all beam x token candidates, so that k alive ones remain even
    # when k of them end here.
    # [batch, beams, vocab] --> [batch, beams * vocab] --> [batch, 2 * beams]
    top_log_probs, top_indices = lax.top_k(log_probs.reshape(batch_size, beam_size * vocab_size), k=2 * beam_size)
    top_parents = top_indices // vocab_size  # [batch, 2 * beams]
    top_new_tokens = (top_indices % vocab_size).astype(jnp.int32)  # [batch, 2 * beams]
    top_tokens = gather_beams(state.live_tokens, top_parents)  # --> [batch, 2 * beams, max_length]
    # [batch, 2 * beams] --> [batch, 2 * beams, 1] written at column `position`.
    top_tokens = lax.dynamic_update_slice_in_dim(top_tokens, top_new_tokens[:, :, None], position, axis=2)
    ended = top_new_tokens == end_id  # [batch, 2 * beams]

    # Alive: the best k candidates that did not end.
    # --> [batch, beams]
    live_log_probs, live_indices = lax.top_k(jnp.where(ended, _NEG_INF, top_log_probs), k=beam_size)
    live_tokens = gather_beams(top_tokens, live_indices)  # --> [batch, beams, max_length]
    live_parents = gather_beams(top_parents, live_indices)  # --> [batch, beams]
    cache = _gather_flat_beams(flat_cache, live_parents)  # --> {[batch * beams, ...]}

    # Finished: the best k of the old finished and the candidates that ended
    # among the k best of this step (the other k only keep k beams alive), so
    # that beam_size=1 is greedy search. -inf candidates (from empty slots or
    # blocked tokens) stay -inf.
    in_top_k = jnp.arange(2 * beam_size) < beam_size  # [2 * beams], top_k sorts best first
    new_scores = jnp.where(ended & in_top_k[None, :],
                           top_log_probs / _length_penalty(position + 1, length_penalty), _NEG_INF)
    finished_scores, finished_tokens = _top_beams(
        jnp.concatenate([state.finished_scores, new_scores], axis=1),  # --> [batch, 3 * beams]
        jnp.concatenate([state.finished_tokens, top_tokens], axis=1),  # --> [batch, 3 * beams, max_length]
        beam_size)  # --> [batch, beams], [batch, beams, max_length]
    return BeamState(
        position=position + 1,
        live_log_probs=live_log_probs,
        live_tokens=live_tokens,
        finished_scores=finished_scores,
        finished_tokens=finished_tokens,
        cache=cache)

  final_state = lax.while_loop(cond_fn, body_fn, init_state)

  # Beams alive at max_length are truncated hypotheses of max_length tokens.
  # After an early exit they are shorter and cannot beat a finished one: drop them.
  truncated_scores = jnp.where(final_state.position == max_length, final_state.live_log_probs / max_penalty, _NEG_INF)
  scores, tokens = _top_beams(
      jnp.concatenate([final_state.finished_scores, truncated_scores], axis=1),  # --> [batch, 2 * beams]
      jnp.concatenate([final_state.finished_tokens, final_state.live_tokens], axis=1),  # [batch, 2 * beams, max_length]
      beam_size)  # --> [batch, beams], [batch, beams, max_length]
  # [batch, beams] --> [batch, beams, 1]: empty slots hold only padding.
  tokens = jnp.where((scores == _NEG_INF)[:, :, None], pad_id, tokens)
  return tokens, scores


# Jitting a whole search.


def jit_search(search: Callable[..., tuple[jax.Array, jax.Array]],
               step_fn: Callable[[Any, jax.Array, Cache, jax.Array], tuple[jax.Array, Cache]],
               **options: Any) -> Callable[[Any, Cache], tuple[jax.Array, jax.Array]]:
  """A jitted `(params, init_cache) -> search(...)` with every option static.

  Model parameters are an argument (not closed over), so they are traced,
  not baked into the program as constants, and new parameters reuse the
  compiled search.

    decode = jit_search(beam_search, step_fn, start_id=1, end_id=2,
                        max_length=60, beam_size=3)
    tokens, scores = decode(params, init_cache)

  Args:
    search: greedy_search or beam_search.
    step_fn: `(params, tokens, cache, position) -> (logits, new_cache)`.
    **options: keyword arguments of `search` (Python values).
  """

  @jax.jit
  def run(params: Any, init_cache: Cache) -> tuple[jax.Array, jax.Array]:
    return search(functools.partial(step_fn, params), init_cache, **options)

  return run
