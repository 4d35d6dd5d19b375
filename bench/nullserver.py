"""The load generator's own ceiling: drive a no-op gRPC server (answers every call with
fixed bytes, no protobuf work) and measure what the load generator achieves and costs.

The no-op server is Python too, so on a small machine it can be the limit itself; the
figure that transfers is the load generator's CPU per request (client_cpu_us_per_request):
one load process saturates at about 1e6 / that value requests per second.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from bench import procstat
from bench.workload import V2_INFER

log = logging.getLogger("bench")


def _serve(conn: Connection, response: bytes) -> None:
    import grpc

    async def main() -> None:
        async def handler(request: bytes, context: Any) -> bytes:
            return response

        service, _, method = V2_INFER.lstrip("/").rpartition("/")
        generic = grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(handler)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((generic,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        await server.stop(0)

    asyncio.run(main())


def measure_ceiling(
    gen: Any, opts: Any, concurrency: tuple[int, ...] = (1, 32, 128)
) -> list[dict[str, Any]]:
    """Points of the load generator against the no-op server (mlp-sized payloads)."""
    from protos import grpc_service_pb2 as pb

    response = pb.ModelInferResponse(model_name="null", model_version="1")
    out = response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    del out
    response.raw_output_contents.append(b"\0" * 8)
    request = pb.ModelInferRequest(model_name="null")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(b"\0" * 32)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, response.SerializeToString()), name="nullserver")
    proc.start()
    results = []
    try:
        port = parent.recv()
        server_pids = [proc.pid] if proc.pid else []
        readings: dict[str, float] = {}

        def mark(key: str) -> None:
            readings[key + "_server"] = procstat.cpu_seconds(server_pids)
            readings[key + "_client"] = procstat.cpu_seconds(gen.pids())

        for conc in concurrency:
            r = gen.run(
                f"127.0.0.1:{port}",
                V2_INFER,
                (request.SerializeToString(),),
                conc,
                warmup_s=opts.warmup_s,
                duration_s=opts.duration_s,
                channels=opts.channels or 1,
                at_start=lambda: mark("a"),
                at_end=lambda: mark("b"),
            )
            s = r.summary(1)
            client = (readings["b_client"] - readings["a_client"]) / opts.duration_s
            server = (readings["b_server"] - readings["a_server"]) / opts.duration_s
            point = {
                "concurrency": conc,
                "requests_per_s": s["inferences_per_s"],
                "p50_ms": s["p50_ms"],
                "p99_ms": s["p99_ms"],
                "client_cores": round(client, 3),
                "null_server_cores": round(server, 3),
                "client_cpu_us_per_request": round(
                    client * opts.duration_s * 1e6 / max(1, r.requests), 1
                ),
                "client_processes": s["client_processes"],
            }
            log.info(
                "load generator vs no-op server c=%d: %.0f req/s, p50 %.3f ms, client %.2f cores "
                "(%.0f us/request), no-op server %.2f cores",
                conc,
                point["requests_per_s"],
                point["p50_ms"],
                client,
                point["client_cpu_us_per_request"],
                server,
            )
            results.append(point)
    finally:
        parent.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    return results
