"""eqmcli: deep face recognition experiments with the Equalized Margin (EqM) loss."""

__version__ = "0.1.0"
