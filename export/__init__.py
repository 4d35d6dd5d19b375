"""Checkpoint -> model_repository/<name>/<version>/{model.onnx, model.json}, behind a parity gate.

Entry points: ``python -m export --model NAME|all`` and :func:`export.api.export_model`.
The model.json contract is docs/model-json.md; its JSON Schema is model.schema.json.
"""

OPSET = 18
