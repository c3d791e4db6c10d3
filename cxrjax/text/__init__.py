"""Report text: cleaning (cleaning.py), tokenizers (tokenizers.py), pretrained word vectors
(word_vectors.py).

The cleaning and tokenizer names are re-exported, so users write `from cxrjax import text` and
`text.clean_report(...)`, `text.WordVocabulary.build(...)`, `text.load(path)`.
"""

from cxrjax.text.cleaning import CLEANING_STYLES, FULL_STOP, clean_report
from cxrjax.text.tokenizers import (BERT_SPECIAL_TOKENS, END, PAD, SPECIAL_TOKENS, START, UNK,
                                    SplitCoverage, Tokenizer, VocabularyFileError, VocabularyStats,
                                    WordPieceTokenizer, WordVocabulary, load, vocabulary_stats)
