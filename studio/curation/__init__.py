"""Curation: image quality metrics, perceptual de-duplication, verdicts and the thresholds learnt from overrides.

    metrics.py   the technical metrics (numpy and PIL only), each a small documented function
    brisque.py   BRISQUE through the `brisque` package's model (a numpy >= 2.4 fix and a faster filter)
    semantic.py  prompt adherence (the shapes-world evaluator), CLIP score and LAION aesthetic when weights exist
    dedup.py     pHash + dHash, near-duplicate groups by multi-index hashing
    embedding_store.py  CLIP image embeddings stored once per image (float16 parts, SQLite index)
    ann.py       near neighbours by cosine without an n x n matrix (random-hyperplane LSH, pure numpy)
    policy.py    the metric table, combined score, verdicts with their reasons, thresholds learnt from overrides
    scoring.py   score one image file (what the parallel workers run)
    cli.py       `./launch.sh curate DIR [--json OUT]`
"""
