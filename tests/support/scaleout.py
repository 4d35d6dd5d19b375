"""What the two scale-out tests share: replicas behind Envoy as processes
(tests/stack/test_scaleout.py) and as containers (tests/stack/test_compose_scale.py)."""

from __future__ import annotations

MODEL = "mlp"
LOAD_CLIENTS = 8  # clients calling through Envoy while a replica goes away
