"""Metrics: captioning.py (BLEU, ROUGE, CIDEr, sacreBLEU; caption_metrics), protocols.py (the scoring
protocols that normalise references and generated texts alike; ptb_tokenizer.py: the COCO caption
evaluation's tokenisation), meteor.py (the METEOR 1.5 jar or NLTK), classification.py (multi-label AUROC;
ChestX-ray14 prediction CSVs, `cxrjax auroc`), baselines.py (constant-report baselines), corpus.py (input
checks and n-grams they share)."""
