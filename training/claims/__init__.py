"""Measured comparisons behind the training report: each family's claim, tested here.

- :mod:`training.claims.seeds`: every model trained on several seeds, mean and spread
  of its held-out metric against its quality bar;
- :mod:`training.claims.spatial`: CNN vs an MLP of similar size on (shifted) digits;
- :mod:`training.claims.memory`: LSTM vs plain RNN by how far back the deciding event is;
- :mod:`training.claims.speed`: Transformer vs LSTM training and inference time by length.
"""
