"""Execution engines beyond the in-process pipeline (optional dependencies, imported lazily).

* :mod:`c3dfeat.engines.ray` — ``extract(..., engine="ray")``: Ray Data, from one machine to a
  cluster (``pip install "c3dfeat[ray]"``).
"""
