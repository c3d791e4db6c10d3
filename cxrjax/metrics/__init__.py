"""Metrics: captioning.py (BLEU, ROUGE, CIDEr, sacreBLEU; caption_metrics), meteor.py (the METEOR 1.5
jar or NLTK), classification.py (multi-label AUROC; ChestX-ray14 prediction CSVs, `cxrjax auroc`),
baselines.py (constant-report baselines), corpus.py (input checks and n-grams they share)."""
