"""The KServe v2 REST binding (Open Inference Protocol over HTTP/1.1), served by uvicorn
on the server's event loop beside gRPC: app.py (routes, bounds, status mapping), codec.py
(JSON tensors), server.py (uvicorn's lifecycle)."""
