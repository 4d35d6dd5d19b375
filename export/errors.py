"""Export failures. Each carries a message meant for the person running the export."""

from __future__ import annotations


class ExportError(Exception):
    """The export could not produce a valid model version; nothing was written."""


class ParityError(ExportError):
    """ONNX Runtime did not reproduce PyTorch within the stated tolerance."""


class ManifestError(ExportError):
    """model.json does not satisfy the contract (schema or cross-field checks)."""
