"""The five model families, one module each (perceptron, mlp, cnn, lstm, transformer),
and the pieces the two sequence families share (sequence). Each module's RECIPE is what
the trainer and export know of it (training.registry lists them)."""
