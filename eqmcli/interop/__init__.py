"""Models in and out of eqm: InsightFace ``arcface_torch`` weights and ONNX.

- `eqmcli.interop.tensors`: renaming tensors through explicit name tables, every name and
  shape checked (nothing is matched by position).
- `eqmcli.interop.insightface`: ``eqm import insightface`` / ``eqm export --insightface``.
- `eqmcli.interop.onnx`: ``eqm export --onnx`` and running an ``.onnx`` file as a backbone.
- `eqmcli.interop.models`: one loader for a run, a checkpoint or an ``.onnx`` file.
"""
