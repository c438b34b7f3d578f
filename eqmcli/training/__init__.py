"""The training core behind `eqm train` and `eqm bench train`."""
