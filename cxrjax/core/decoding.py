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
               because every row advances in lockstep. Entries wrapped in
               `Shared` (read-only, alike in every beam of an example) keep
               their [batch, ...] rows and are never gathered (see Shared).
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

`length_normalization` chooses between two rule sets (the default "gnmt"
above, and "hf", which reproduces transformers 5.x `generate(num_beams=k,
do_sample=False, early_stopping=False)` token for token and score for score):

  rule                  "gnmt" (default)                  "hf" (transformers)
  score of a finished   log_prob / ((5 + n) / 6) ** alpha log_prob / n ** alpha
    hypothesis of n
    tokens (end incl.)
  length_penalty        alpha >= 0, default 0 (none)      any float; HF's default is 1.0
  pool entry            ended among the k best of the 2k  the same, and at max_length every one of
                                                          the k best (ended or not, n = max_length);
                                                          never once the row has stopped
  stopping (per row)    the pool is full and no alive     the pool is full and the best alive
                        beam can beat its worst even at   log_prob / n ** alpha at the current n
                        max_length (a proven bound)       does not beat its worst (a heuristic: a
                                                          longer beam might still have won; kept,
                                                          since it decides transformers' results)
  after the loop        alive beams compete as truncated  the pool as it is (already full)

In "hf" mode a row that stopped takes no more hypotheses while the others run
on, as in transformers; beam_size=1 equals greedy search only when alpha is 0
(transformers runs greedy search for num_beams=1 whatever the penalty: call
greedy_search then). The scores returned are transformers' `sequences_scores`.

With `return_token_log_probs=True` the searches also return each generated
token's log-probability (after any n-gram penalty; 0 after the end token), so
that `sum(token_log_probs)` is the hypothesis' log-probability.
"""

import functools
from typing import Any, Callable

import flax
import jax
from jax import lax
import jax.numpy as jnp

Cache = Any  # a pytree of arrays
StepFn = Callable[[jax.Array, Cache, jax.Array], tuple[jax.Array, Cache]]


@flax.struct.dataclass
class Shared:
  """A cache entry that every beam of an example holds alike and that steps only read (the image's
  cross-attention keys and values, a prefilled prefix's). Beam search neither repeats it over the beams
  nor gathers it by parent beam: it keeps its [batch, ...] rows while the other entries have [batch *
  beams, ...], and step code reads it with `attention_scores` / `attention_context`, which let row
  b * beams + k use row b. For a large encoder that is most of a step's memory traffic saved.
  step_fn must return it unchanged; `shared_value` reads it (and passes plain arrays through)."""

  value: jax.Array


def shared_value(x: Any) -> Any:
  """The array of a `Shared` entry, or `x` itself."""
  return x.value if isinstance(x, Shared) else x


def attention_scores(queries: jax.Array, keys: jax.Array) -> jax.Array:
  """Dot products of queries [rows, heads, q, d] with keys [key_rows, heads, k, d] -> [rows, heads, q, k],
  where rows = key_rows * groups and query row r reads key row r // groups (1 group: the usual product;
  `groups` beams reading a Shared entry): the groups fold into the query axis, so no key is copied.

  Heads come before positions (transformers' cache layout): the products batch over the two leading axes
  and read the keys as they are stored. With positions first, XLA:CPU copied every cached key into that
  order at every decoding step (a 577-token BLIP memory: 14x the time of the products themselves)."""
  rows, heads, length, depth = queries.shape
  key_rows, groups = keys.shape[0], rows // keys.shape[0]
  if groups > 1:
    queries = queries.reshape(key_rows, groups, heads, length, depth).transpose(0, 2, 1, 3, 4)
  folded = queries.reshape(key_rows, heads, groups * length, depth)
  scores = jnp.einsum("bhqd,bhkd->bhqk", folded, keys)  # [key_rows, heads, groups * q, k]
  if groups > 1:
    scores = scores.reshape(key_rows, heads, groups, length, keys.shape[2]).transpose(0, 2, 1, 3, 4)
  return scores.reshape(rows, heads, length, keys.shape[2])


def attention_context(weights: jax.Array, values: jax.Array) -> jax.Array:
  """Attention weights [rows, heads, q, k] over values [key_rows, heads, k, d] -> [rows, heads, q, d], rows
  grouped as in `attention_scores`."""
  rows, heads, length, num_keys = weights.shape
  key_rows, groups = values.shape[0], rows // values.shape[0]
  depth = values.shape[-1]
  if groups > 1:
    weights = weights.reshape(key_rows, groups, heads, length, num_keys).transpose(0, 2, 1, 3, 4)
  folded = weights.reshape(key_rows, heads, groups * length, num_keys)
  context = jnp.einsum("bhqk,bhkd->bhqd", folded, values)  # [key_rows, heads, groups * q, d]
  if groups > 1:
    context = context.reshape(key_rows, heads, groups, length, depth).transpose(0, 2, 1, 3, 4)
  return context.reshape(rows, heads, length, depth)


def merge_heads(context: jax.Array) -> jax.Array:
  """[batch, heads, q, head_dim] -> [batch, q, heads * head_dim]: attention's output, for its projection."""
  batch, heads, length, depth = context.shape
  return context.transpose(0, 2, 1, 3).reshape(batch, length, heads * depth)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[batch, length, heads * head_dim] -> [batch, heads, length, head_dim]: the layout of
  `attention_scores`' queries and keys (and of the KV caches)."""
  batch, length, width = x.shape
  return x.reshape(batch, length, num_heads, width // num_heads).transpose(0, 2, 1, 3)


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
      raise ValueError(
        f"init_cache leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; "
        f"its leading dimension must be the batch size {batch_size}"
      )
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
      raise ValueError(
        f"step_fn changed cache leaf {jax.tree_util.keystr(path)} from "
        f"{old.dtype}{list(old.shape)} to {new.dtype}{list(new.shape)}"
      )
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


def _penalize_repeats(
  log_probs: jax.Array, sequences: jax.Array, length: jax.Array, n: int, penalty: float | None
) -> jax.Array:
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
  token_log_probs: jax.Array  # float32 [batch, max_length]: each one's, 0 after the end token
  finished: jax.Array  # bool [batch]: end_id generated
  cache: Cache  # leaves [batch, ...]


def greedy_search(
  step_fn: StepFn,
  init_cache: Cache,
  *,
  start_id: int,
  end_id: int,
  max_length: int,
  batch_size: int | None = None,
  pad_id: int = 0,
  block_ngram_repeat: int = 0,
  ngram_penalty: float | None = None,
  return_token_log_probs: bool = False,
) -> tuple[jax.Array, ...]:
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
    return_token_log_probs: also return each token's log-probability.

  Returns:
    tokens: int32 [batch, max_length], start token excluded, pad_id after end.
    log_probs: float32 [batch], sum of the log-probabilities (after any n-gram
      penalty) of the generated tokens, end token included.
    token_log_probs (with return_token_log_probs): float32 [batch, max_length],
      each generated token's log-probability, 0 after the end token.
  """
  _check_options(max_length, block_ngram_repeat, ngram_penalty)
  batch_size = _batch_size_of(init_cache, batch_size)
  init_state = GreedyState(
    position=jnp.array(0, jnp.int32),
    last_tokens=jnp.full((batch_size,), start_id, jnp.int32),
    tokens=jnp.full((batch_size, max_length), pad_id, jnp.int32),
    log_probs=jnp.zeros((batch_size,), jnp.float32),
    token_log_probs=jnp.zeros((batch_size, max_length), jnp.float32),
    finished=jnp.zeros((batch_size,), jnp.bool_),
    cache=_as_arrays(init_cache),
  )

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
    next_log_probs = jnp.where(state.finished, 0.0, next_log_probs)
    # [batch] --> [batch, 1] written at column `position`.
    tokens = lax.dynamic_update_slice_in_dim(state.tokens, next_tokens[:, None], state.position, axis=1)
    token_log_probs = lax.dynamic_update_slice_in_dim(
      state.token_log_probs, next_log_probs[:, None], state.position, axis=1
    )
    return GreedyState(
      position=state.position + 1,
      last_tokens=next_tokens,
      tokens=tokens,
      log_probs=state.log_probs + next_log_probs,
      token_log_probs=token_log_probs,
      finished=state.finished | (next_tokens == end_id),
      cache=cache,
    )

  final_state = lax.while_loop(cond_fn, body_fn, init_state)
  if return_token_log_probs:
    return final_state.tokens, final_state.log_probs, final_state.token_log_probs
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
  """[batch, ...] -> [batch * beams, ...], each example repeated beam_size times (Shared entries and
  scalars stay as they are)."""
  return jax.tree.map(
    lambda x: x if isinstance(x, Shared) or x.ndim == 0 else jnp.repeat(x, beam_size, axis=0),
    cache,
    is_leaf=lambda x: isinstance(x, Shared),
  )


def _gather_flat_beams(cache: Cache, beam_indices: jax.Array) -> Cache:
  """Selects beams of a flat cache: [batch * beams, ...] -> [batch * beams, ...]."""
  batch_size, beam_size = beam_indices.shape

  def gather_fn(x: jax.Array | Shared) -> jax.Array | Shared:
    if isinstance(x, Shared) or x.ndim == 0:  # Alike in every beam: nothing to select.
      return x
    beams = x.reshape((batch_size, beam_size) + x.shape[1:])  # [batch * beams, ...] --> [batch, beams, ...]
    beams = gather_beams(beams, beam_indices)  # --> [batch, beams, ...]
    return beams.reshape(x.shape)  # --> [batch * beams, ...]

  return jax.tree.map(gather_fn, cache, is_leaf=lambda x: isinstance(x, Shared))


def _top_beams(scores: jax.Array, hypotheses: Any, beam_size: int) -> tuple[jax.Array, Any]:
  """Keeps the best beam_size of [batch, n] scores and of every [batch, n, length] leaf of
  `hypotheses`, best first."""
  top_scores, top_indices = lax.top_k(scores, k=beam_size)  # --> [batch, beams]
  return top_scores, gather_beams(hypotheses, top_indices)  # --> [batch, beams, length]


LENGTH_NORMALIZATIONS = ("gnmt", "hf")


def _normalized(log_probs: jax.Array, length: jax.Array | int, alpha: float, rule: str) -> jax.Array:
  """The score of hypotheses of `length` generated tokens (end token included) under `rule`."""
  if rule == "hf":
    return log_probs / jnp.power(jnp.asarray(length, jnp.float32), alpha)
  return log_probs / _length_penalty(length, alpha)


@flax.struct.dataclass
class BeamState:
  """Loop state of beam search. Slots holding no hypothesis score -inf."""

  position: jax.Array  # int32 scalar: tokens generated so far
  # Alive (unfinished) hypotheses, best first, with their log-probabilities.
  live_log_probs: jax.Array  # float32 [batch, beams]
  live_tokens: jax.Array  # int32 [batch, beams, max_length]
  live_token_log_probs: jax.Array  # float32 [batch, beams, max_length]
  # Finished hypotheses (the pool), best first, with their length-normalized scores.
  finished_scores: jax.Array  # float32 [batch, beams]
  finished_tokens: jax.Array  # int32 [batch, beams, max_length]
  finished_token_log_probs: jax.Array  # float32 [batch, beams, max_length]
  # Whether the row's pool still takes hypotheses ("hf": False once the row stopped; "gnmt": always True).
  open: jax.Array  # bool [batch]
  # Decoder cache of the alive beams, flat as step_fn sees it.
  cache: Cache  # leaves [batch * beams, ...]


def beam_search(
  step_fn: StepFn,
  init_cache: Cache,
  *,
  start_id: int,
  end_id: int,
  max_length: int,
  beam_size: int,
  length_penalty: float = 0.0,
  length_normalization: str = "gnmt",
  batch_size: int | None = None,
  pad_id: int = 0,
  block_ngram_repeat: int = 0,
  ngram_penalty: float | None = None,
  return_token_log_probs: bool = False,
) -> tuple[jax.Array, ...]:
  """Beam search over a batch in one `lax.while_loop`.

  The cache is expanded to [batch * beams, ...] once and re-gathered by the
  parent beam of every surviving hypothesis at every step.

  Args:
    step_fn: `(tokens [batch * beams], cache, position) -> (logits [batch * beams,
      vocab], cache)`; see the module docstring.
    init_cache: pytree whose non-scalar leaves are [batch, ...].
    start_id: token fed at position 0 (not part of the output).
    end_id: end-of-sequence token; generated, kept, and followed by pad_id.
    max_length: most tokens generated, end token included (transformers'
      max_new_tokens).
    beam_size: hypotheses kept per example.
    length_penalty: "gnmt": alpha of the GNMT penalty, a hypothesis of `length`
      tokens (end token included) scores log_prob / ((5 + length) / 6) ** alpha;
      0 ranks by plain log-probability; must be >= 0 for the early exit to
      hold. "hf": the exponent of transformers' log_prob / length ** alpha
      (its default is 1.0); any float.
    length_normalization: "gnmt" or "hf": the rule set (module docstring).
    batch_size: inferred from init_cache when None.
    pad_id: fills positions after the end token, and empty slots.
    block_ngram_repeat: n > 0 forbids a token that would repeat an n-gram
      already in that beam's sequence (3 = trigram blocking); 0 disables.
    ngram_penalty: None blocks such tokens (-inf); a float <= 0 is instead
      added to their log-probability once per earlier occurrence.
    return_token_log_probs: also return each token's log-probability.

  Returns:
    tokens: int32 [batch, beams, max_length], best first, start token
      excluded, pad_id after the end token. Hypotheses still alive at
      max_length compete as truncated sequences (no end token).
    scores: float32 [batch, beams], length-normalized log-probabilities
      ("hf": transformers' `sequences_scores`); -inf (with all-pad tokens) for
      slots left empty because fewer than beam_size sequences exist.
    token_log_probs (with return_token_log_probs): float32 [batch, beams,
      max_length], each token's log-probability, 0 after the end token.
  """
  _check_options(max_length, block_ngram_repeat, ngram_penalty)
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  if length_normalization not in LENGTH_NORMALIZATIONS:
    raise ValueError(f"length_normalization must be one of {LENGTH_NORMALIZATIONS}, got {length_normalization!r}")
  hf = length_normalization == "hf"
  if not hf and not length_penalty >= 0:
    raise ValueError(f"length_penalty must be >= 0 with GNMT normalization, got {length_penalty}")
  batch_size = _batch_size_of(init_cache, batch_size)
  rows = batch_size * beam_size
  # GNMT: alive log-probabilities only fall and the penalty only grows with
  # length, so an alive beam can at best score this much divided into its log-prob.
  max_penalty = _length_penalty(max_length, length_penalty)

  def normalized(log_probs: jax.Array, length: jax.Array | int) -> jax.Array:
    return _normalized(log_probs, length, length_penalty, length_normalization)

  init_state = BeamState(
    position=jnp.array(0, jnp.int32),
    # Only beam 0 starts alive, so the first step does not pick one
    # continuation beam_size times.
    live_log_probs=jnp.tile(jnp.array([0.0] + [_NEG_INF] * (beam_size - 1), jnp.float32), (batch_size, 1)),
    live_tokens=jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32),
    live_token_log_probs=jnp.zeros((batch_size, beam_size, max_length), jnp.float32),
    finished_scores=jnp.full((batch_size, beam_size), _NEG_INF, jnp.float32),
    finished_tokens=jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32),
    finished_token_log_probs=jnp.zeros((batch_size, beam_size, max_length), jnp.float32),
    open=jnp.ones((batch_size,), jnp.bool_),
    cache=_expand_beams(_as_arrays(init_cache), beam_size),
  )

  def cond_fn(state: BeamState) -> jax.Array:
    if hf:
      return (state.position < max_length) & jnp.any(state.open)
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
      position,
      block_ngram_repeat,
      ngram_penalty,
    )
    # [batch * beams, vocab] --> [batch, beams * vocab]
    step_log_probs = flat_log_probs.reshape(batch_size, beam_size * vocab_size)
    # [batch, beams, vocab] + [batch, beams, 1] --> [batch, beams * vocab]
    log_probs = (flat_log_probs.reshape(batch_size, beam_size, vocab_size) + state.live_log_probs[:, :, None]).reshape(
      batch_size, beam_size * vocab_size
    )

    # Top 2k of all beam x token candidates, so that k alive ones remain even
    # when k of them end here.
    top_log_probs, top_indices = lax.top_k(log_probs, k=2 * beam_size)  # --> [batch, 2 * beams]
    top_parents = top_indices // vocab_size  # [batch, 2 * beams]
    top_new_tokens = (top_indices % vocab_size).astype(jnp.int32)  # [batch, 2 * beams]
    top_new_log_probs = jnp.take_along_axis(step_log_probs, top_indices, axis=1)  # [batch, 2 * beams]
    # --> [batch, 2 * beams, max_length] each
    top_tokens, top_token_log_probs = gather_beams((state.live_tokens, state.live_token_log_probs), top_parents)
    # [batch, 2 * beams] --> [batch, 2 * beams, 1] written at column `position`.
    top_tokens = lax.dynamic_update_slice_in_dim(top_tokens, top_new_tokens[:, :, None], position, axis=2)
    top_token_log_probs = lax.dynamic_update_slice_in_dim(
      top_token_log_probs, top_new_log_probs[:, :, None], position, axis=2
    )
    # Candidates that stop: the end token; in "hf" mode also every candidate at
    # max_length (transformers' max-length stopping criterion).
    stops = top_new_tokens == end_id  # [batch, 2 * beams]
    if hf:
      stops = stops | (position + 1 == max_length)

    # Alive: the best k candidates that did not stop.
    # --> [batch, beams]
    live_log_probs, live_indices = lax.top_k(jnp.where(stops, _NEG_INF, top_log_probs), k=beam_size)
    # --> [batch, beams, max_length], [batch, beams, max_length], [batch, beams]
    live_tokens, live_token_log_probs, live_parents = gather_beams(
      (top_tokens, top_token_log_probs, top_parents), live_indices
    )
    cache = _gather_flat_beams(flat_cache, live_parents)  # --> {[batch * beams, ...]}

    # Finished: the best k of the old finished and the candidates that stopped
    # among the k best of this step (the other k only keep k beams alive), so
    # that beam_size=1 is greedy search. -inf candidates (from empty slots or
    # blocked tokens) stay -inf.
    in_top_k = jnp.arange(2 * beam_size) < beam_size  # [2 * beams], top_k sorts best first
    pooled = stops & in_top_k[None, :] & state.open[:, None]  # [batch, 2 * beams]
    new_scores = jnp.where(pooled, normalized(top_log_probs, position + 1), _NEG_INF)
    finished_scores, (finished_tokens, finished_token_log_probs) = _top_beams(
      jnp.concatenate([state.finished_scores, new_scores], axis=1),  # --> [batch, 3 * beams]
      (
        jnp.concatenate([state.finished_tokens, top_tokens], axis=1),  # --> [batch, 3 * beams, max_length]
        jnp.concatenate([state.finished_token_log_probs, top_token_log_probs], axis=1),
      ),
      beam_size,
    )  # --> [batch, beams], ([batch, beams, max_length], [batch, beams, max_length])
    open_rows = state.open
    if hf:
      # transformers' early_stopping=False heuristic: stop the row once its pool
      # is full and the best alive beam, normalized at its current length, does
      # not beat the worst pooled hypothesis.
      worst_finished = finished_scores[:, -1]  # [batch]
      best_alive = normalized(live_log_probs[:, 0], position + 1)  # [batch]
      open_rows = open_rows & ~((worst_finished > _NEG_INF) & (best_alive <= worst_finished))
    return BeamState(
      position=position + 1,
      live_log_probs=live_log_probs,
      live_tokens=live_tokens,
      live_token_log_probs=live_token_log_probs,
      finished_scores=finished_scores,
      finished_tokens=finished_tokens,
      finished_token_log_probs=finished_token_log_probs,
      open=open_rows,
      cache=cache,
    )

  final_state = lax.while_loop(cond_fn, body_fn, init_state)

  hypotheses = (final_state.finished_tokens, final_state.finished_token_log_probs)
  scores = final_state.finished_scores
  if not hf:
    # Beams alive at max_length are truncated hypotheses of max_length tokens.
    # After an early exit they are shorter and cannot beat a finished one: drop them.
    truncated_scores = jnp.where(final_state.position == max_length, final_state.live_log_probs / max_penalty, _NEG_INF)
    scores, hypotheses = _top_beams(
      jnp.concatenate([scores, truncated_scores], axis=1),  # --> [batch, 2 * beams]
      (
        jnp.concatenate([hypotheses[0], final_state.live_tokens], axis=1),  # [batch, 2 * beams, max_length]
        jnp.concatenate([hypotheses[1], final_state.live_token_log_probs], axis=1),
      ),
      beam_size,
    )  # --> [batch, beams], ([batch, beams, max_length], [batch, beams, max_length])
  # [batch, beams] --> [batch, beams, 1]: empty slots hold only padding.
  empty = (scores == _NEG_INF)[:, :, None]
  tokens = jnp.where(empty, pad_id, hypotheses[0])
  if return_token_log_probs:
    return tokens, scores, jnp.where(empty, 0.0, hypotheses[1])
  return tokens, scores


# Jitting a whole search.


def jit_search(
  search: Callable[..., tuple[jax.Array, jax.Array]],
  step_fn: Callable[[Any, jax.Array, Cache, jax.Array], tuple[jax.Array, Cache]],
  **options: Any,
) -> Callable[[Any, Cache], tuple[jax.Array, jax.Array]]:
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
