"""Measured comparisons behind the training report: each family's claim, tested here.

- :mod:`evaluation.claims.seeds`: every model trained on several seeds, mean and spread
  of its held-out metric against its quality bar;
- :mod:`evaluation.claims.spatial`: CNN vs an MLP of similar size on (shifted) digits;
- :mod:`evaluation.claims.memory`: LSTM vs plain RNN by how far back the deciding event is;
- :mod:`evaluation.claims.speed`: Transformer vs LSTM training and inference time by length.
"""
