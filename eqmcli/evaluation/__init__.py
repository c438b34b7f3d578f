"""Evaluation: the embedding extractor, the verification protocols and their benchmark files.

- `features`: the one extractor (`extract_embeddings`) behind `eqm eval`, `eqm analyze`,
  `eqm embed`, training's evaluation and the benchmark protocols; `embed`: `eqm embed`'s
  image lists and ``.npy`` output.
- Pair verification (LFW and its siblings): `pair_lists` (``pairs.txt`` and the user's
  pairs files), `pair_sets` (`VerificationSet`, InsightFace ``.bin``, the synthetic pairs),
  `verification` (the 10-fold protocol, `evaluate_set`), `pair_outcomes` (per-pair scores
  and failures beside each result).
- `evaluate`: `eqm eval`'s core (benchmark sources, results folders, `run_evaluation`).
- Set-based benchmarks, each reader beside its protocol: `ijb/`, `ytf/`, `megaface/`
  (``files.py`` reads the published layout, ``protocol.py`` scores it); shared pieces:
  `templates` (IJB template features), `search` (1:N gallery search), `feature_cache`
  (`Embedder` and ``RUN/eval/cache/``), `checksums`; `protocols` runs the requested ones.

Every similarity is a cosine; accuracies, FAR, TAR, FPIR and TPIR are fractions in [0, 1].
`docs/benchmarks.md` documents each protocol and its defaults.
"""
