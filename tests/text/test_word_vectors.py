"""Pretrained word vectors: the real GloVe fixture, fastText headers, and clear errors for broken files."""

import numpy as np
import pytest

from cxrjax.text import tokenizers
from cxrjax.text import word_vectors

GLOVE_FIXTURE = "text/glove.6B.50d.first76.txt"


def _vocabulary(*words):
  return tokenizers.WordVocabulary(tokens=tokenizers.SPECIAL_TOKENS + tuple(words))


def _fixture_rows(path):
  """word -> vector, parsed independently of the loader (the fixture has single-token words)."""
  rows = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    word, *values = line.split(" ")
    rows[word] = np.array([float(v) for v in values], np.float32)
  return rows


def _write(path, lines, encoding="utf-8"):
  path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
  return path


def test_glove_fixture_rows_land_on_their_words_including_non_ascii_tokens(shared_data):
  path = shared_data / GLOVE_FIXTURE
  rows = _fixture_rows(path)
  vocabulary = _vocabulary("the", "ö", "हु", ".", "and", "cardiomegaly", "effusion")
  matrix, stats = word_vectors.load_word_vectors(path, vocabulary, dim=50)
  assert matrix.shape == (len(vocabulary), 50) and matrix.dtype == np.float32
  for word in ("the", "ö", "हु", "and"):
    np.testing.assert_array_equal(matrix[vocabulary.token_id(word)], rows[word])
  np.testing.assert_array_equal(matrix[vocabulary.pad_id], np.zeros(50))
  assert (stats.dim, stats.lines, stats.found) == (50, 76, 4)
  assert stats.missing_words == (".", "cardiomegaly", "effusion")  # The fixture has no ".".
  assert stats.coverage == pytest.approx(4 / 7)
  assert "4 of 7" in stats.summary() and "cardiomegaly" in stats.summary()
  # Special tokens other than <pad> are random rows, not zeros, and not counted as missing.
  for token in (tokenizers.UNK, tokenizers.START, tokenizers.END):
    assert np.abs(matrix[vocabulary.token_id(token)]).sum() > 0
  # The size is read from the file when not given.
  same, _ = word_vectors.load_word_vectors(path, vocabulary)
  np.testing.assert_array_equal(same, matrix)
  # The tokens alone (special tokens recognised by name) give the same matrix.
  from_tokens, _ = word_vectors.load_word_vectors(path, list(vocabulary.tokens), dim=50)
  np.testing.assert_array_equal(from_tokens, matrix)


def test_missing_words_are_seeded_and_scaled_like_the_found_vectors(shared_data):
  path = shared_data / GLOVE_FIXTURE
  rows = _fixture_rows(path)
  found = list(rows)[:60]
  missing = [f"word{i}" for i in range(400)]
  vocabulary = _vocabulary(*found, *missing)
  matrix, stats = word_vectors.load_word_vectors(path, vocabulary, seed=3)
  again, _ = word_vectors.load_word_vectors(path, vocabulary, seed=3)
  other, _ = word_vectors.load_word_vectors(path, vocabulary, seed=4)
  np.testing.assert_array_equal(matrix, again)
  missing_rows = matrix[[vocabulary.token_id(w) for w in missing]]
  assert not np.allclose(missing_rows, other[[vocabulary.token_id(w) for w in missing]])
  found_rows = np.stack([rows[w] for w in found])
  np.testing.assert_array_equal(matrix[[vocabulary.token_id(w) for w in found]], found_rows)
  assert stats.init_scale == pytest.approx(float(found_rows.std()), rel=1e-5)
  assert missing_rows.std() == pytest.approx(stats.init_scale, rel=0.05)
  assert abs(missing_rows.mean()) < 0.05 * stats.init_scale + 0.01
  assert stats.missing == 400 and stats.found == 60


def test_wrong_size_names_the_file_and_line(shared_data):
  path = shared_data / GLOVE_FIXTURE
  with pytest.raises(word_vectors.WordVectorFileError, match=r"glove\.6B\.50d\.first76\.txt, line 1: 50-d.*300-d"):
    word_vectors.load_word_vectors(path, _vocabulary("the"), dim=300)


def test_fasttext_vec_with_header_and_trailing_spaces(tmp_path):
  path = _write(tmp_path / "wiki.vec", ["3 4", "the 0.1 0.2 0.3 0.4 ", "heart 1 2 3 4 ", "normal -1 -2 -3 -4e-1 "])
  vocabulary = _vocabulary("heart", "normal", "lung")
  matrix, stats = word_vectors.load_word_vectors(path, vocabulary, dim=4)
  np.testing.assert_allclose(matrix[vocabulary.token_id("heart")], [1, 2, 3, 4])
  np.testing.assert_allclose(matrix[vocabulary.token_id("normal")], [-1, -2, -3, -0.4])
  assert (stats.lines, stats.found, stats.missing_words) == (3, 2, ("lung",))
  with pytest.raises(word_vectors.WordVectorFileError, match="wiki.vec, line 1: the header declares 4-d"):
    word_vectors.load_word_vectors(path, vocabulary, dim=5)
  truncated = _write(tmp_path / "cut.vec", ["5 4", "the 0.1 0.2 0.3 0.4", "heart 1 2 3 4"])
  with pytest.raises(word_vectors.WordVectorFileError, match="cut.vec: the header declares 5 words .* 2"):
    word_vectors.load_word_vectors(truncated, vocabulary)


def test_words_with_spaces_as_in_glove_840b_are_read_not_confused(tmp_path):
  path = _write(tmp_path / "spaced.txt", ["heart 1 2 3", ". . . 4 5 6", "at name@domain.com 7 8 9", "lung 0 1 0"])
  vocabulary = _vocabulary("heart", "lung")
  matrix, stats = word_vectors.load_word_vectors(path, vocabulary)
  np.testing.assert_array_equal(matrix[vocabulary.token_id("lung")], [0, 1, 0])
  assert (stats.dim, stats.lines, stats.found) == (3, 4, 2)


@pytest.mark.parametrize(
  "lines, line_number, problem",
  [
    (["heart 1 2 3", "lung 1 2"], 2, "2 values, expected a word and 3 values"),
    (["heart 1 2 3", "lung 1 2 3 4"], 2, "more than 3 values after 'lung'"),
    (["heart 1 2 3", "other 1 2 3 4 5"], 2, "more than 3 values"),  # Checked for every word.
    (["heart 1 2 3", "lung 1 two 3"], 2, "a value of 'lung' is not a number"),
    (["heart 1 2 3", "", "lung 1 2 3"], 2, "empty line"),
    (["heart 1 2 3", "lung 1 2 3", "other 0 0 0", "heart 3 2 1"], 4, "duplicate word 'heart' .first on line 1"),
    (["heart 1 2 3", "lung 1 nan 3"], 2, "the vector of 'lung' has a non-finite value"),
    (["heart"], 1, "expected a word followed by its vector values"),
  ],
)
def test_broken_files_name_the_file_line_and_problem(tmp_path, lines, line_number, problem):
  path = _write(tmp_path / "broken.txt", lines)
  with pytest.raises(word_vectors.WordVectorFileError, match=rf"broken\.txt, line {line_number}: {problem}"):
    word_vectors.load_word_vectors(path, _vocabulary("heart", "lung"))


def test_not_utf8_missing_file_and_wrong_file(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("heart 1 2\n".encode() + "s\xe9rum 1 2\n".encode("latin-1"))
  with pytest.raises(word_vectors.WordVectorFileError, match=r"latin1\.txt, line 2: not UTF-8"):
    word_vectors.load_word_vectors(path, _vocabulary("heart"))
  with pytest.raises(FileNotFoundError, match="nothing.txt"):
    word_vectors.load_word_vectors(tmp_path / "nothing.txt", _vocabulary("heart"))
  with pytest.raises(word_vectors.WordVectorFileError, match="none of the 2 vocabulary words"):
    word_vectors.load_word_vectors(_write(tmp_path / "other.txt", ["herz 1 2"]), _vocabulary("heart", "lung"))
  with pytest.raises(word_vectors.WordVectorFileError, match="empty file"):
    word_vectors.load_word_vectors(_write(tmp_path / "empty.txt", []), _vocabulary("heart"))
