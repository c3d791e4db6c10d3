"""Report text: cleaning.py (clean_report and its styles), tokenizers.py (one interface for word
vocabularies and WordPiece; load), word_vectors.py (GloVe / fastText embedding matrices)."""
