"""Operational concerns every layer may use: metrics, logs, tracing, auth tokens, TLS,
and the call being served."""
