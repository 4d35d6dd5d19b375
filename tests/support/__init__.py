"""Helpers of the test suite; no tests here, and no test module imports another.

- paths: ROOT, the repository root.
- servers: in-process nnserve servers (running_server, make_settings), the session
  fixtures (model_repository, classify_server, sequence_server, servers, registered by
  tests/conftest.py) and hold_inference_thread() (the thread gate).
- models, inference, repository: the reference models' names, goldens and ONNX Runtime
  answers; KServe v2 requests and answers; version folders changed under a server.
- metrics: the one /metrics reader (prometheus_client's parser).
- process: nnserve as a process of its own (ServerProcess: port 0 + ports file) and the
  lifecycle of the external tools (ToolProcess: start, wait ready, stop by pid, log tail).
- docker_engine, compose_stack, envoy_proxy, prometheus_server: the external tools.
- ports: the two ports a process cannot bind itself (held, never guessed).
- tools: finding the tools, and failing (or, opted out, skipping) without one.
- cli, training, batching, bench, pki, security, kserve_schema, scaleout: what the
  client CLI, training, batcher, benchmark, security, manifest and scale-out tests share.
"""
