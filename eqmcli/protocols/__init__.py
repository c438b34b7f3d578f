"""Template-, video- and gallery-based benchmarks beyond the pair lists of `eqmcli.verification`.

- `eqmcli.protocols.templates`: IJB-B / IJB-C template features (image -> media -> template)
  and chunked template-pair scoring.
- `eqmcli.protocols.search`: chunked gallery search (top-k), CMC and open-set TPIR at FPIR.
- `eqmcli.protocols.ijb`, `eqmcli.protocols.ytf`, `eqmcli.protocols.megaface`: each
  benchmark end to end (read, embed with `eqmcli.embed.extract_embeddings`, score) with a
  typed result whose ``to_dict`` is its ``RUN/eval/<benchmark>.json``.
- `eqmcli.protocols.cache`: embeddings cached under ``RUN/eval/cache/``.

Every similarity is a cosine; FAR, TAR, FPIR, TPIR and identification rates are fractions
in [0, 1]. `docs/benchmarks.md` documents each protocol and its defaults.
"""
