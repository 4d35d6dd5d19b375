"""The load generator's own ceiling: drive a no-op gRPC server (answers every call with
fixed bytes, no protobuf work) and measure what the load generator achieves and costs.

The no-op server is Python too, so on a small machine it can be the limit itself; the
figure that transfers is the load generator's CPU per request (client_cpu_us_per_request):
one load process saturates at about 1e6 / that value requests per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sys
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bench import procstat
from bench.workload import V2_INFER, ModelInfo
from contract.model import V2_TO_NUMPY

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


# ---------------------------------------------------------------------- standalone no-op


def noop_response(info: ModelInfo) -> bytes:
    """What nnserve answers to one batch-1 request of this model (outputs as raw bytes,
    zeros), serialized once: the no-op server returns these bytes to every ModelInfer."""
    from protos import grpc_service_pb2 as pb

    response = pb.ModelInferResponse(model_name=info.name, model_version="1")
    for tensor in info.outputs:
        shape = [1, *(d if d > 0 else 1 for d in tensor.shape[1:])]
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        size = int(np.prod(shape)) * V2_TO_NUMPY[tensor.datatype].itemsize
        response.raw_output_contents.append(b"\0" * size)
    return response.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def request_id(data: bytes) -> bytes:
    """ModelInferRequest.id (field 3) from the wire bytes without parsing the message:
    steps over the length-delimited fields 1 and 2 (model name, version) that precede it
    when the client writes fields in order; b"" when there is none."""
    pos = 0
    while pos < len(data):
        tag = data[pos]
        field_number, wire_type = tag >> 3, tag & 7
        if wire_type != 2 or field_number > 3:
            return b""
        pos += 1
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if field_number == 3:
            return data[pos : pos + length]
        pos += length
    return b""


async def serve_noop(info: ModelInfo, host: str, port: int, ready: Any = None) -> None:
    """A grpc.aio KServe v2 server whose ModelInfer (and each message of ModelStreamInfer)
    does no work: the request stays bytes, the response is fixed bytes. Metadata, config
    and readiness answer from `info`, so perf_analyzer and readiness probes work; nothing
    else is served."""
    import grpc

    from protos import grpc_service_pb2 as pb
    from protos import model_config_pb2 as mc

    answer = noop_response(info)

    def tensors(items: Any, add: Any) -> None:
        # A batch-only input ([-1], e.g. lengths) as nnserve and Triton report it: [-1, 1].
        for t in items:
            add(name=t.name, datatype=t.datatype, shape=list(t.shape) if t.shape[1:] else [-1, 1])

    metadata = pb.ModelMetadataResponse(name=info.name, versions=["1"], platform="noop")
    tensors(info.inputs, metadata.inputs.add)
    tensors(info.outputs, metadata.outputs.add)
    # As nnserve reports it: batching model, dims without the batch axis.
    max_batch = info.spec.serving.max_batch_size if info.spec else 64
    config = mc.ModelConfig(name=info.name, platform="noop", max_batch_size=max_batch)
    for t in info.inputs:
        tensor = config.input.add(name=t.name, data_type=mc.DataType.Value("TYPE_" + t.datatype),
                                  dims=list(t.shape[1:]) or [1])  # fmt: skip
        if not t.shape[1:]:
            tensor.reshape.SetInParent()  # dims [1], reshape []: sent as [B, 1]
    for t in info.outputs:
        config.output.add(name=t.name, data_type=mc.DataType.Value("TYPE_" + t.datatype),
                          dims=list(t.shape[1:]) or [1])  # fmt: skip

    async def infer(request: bytes, context: Any) -> bytes:
        rid = request_id(request)
        # perf_analyzer's async mode matches responses to requests by id: echo it.
        return answer + b"\x1a" + _varint(len(rid)) + rid if rid else answer

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:  # each answer: ModelStreamInferResponse.infer_response
            inner = await infer(request, context)
            yield b"\x12" + _varint(len(inner)) + inner

    def unary(fn: Any, request_type: Any) -> Any:
        async def handler(request: Any, context: Any) -> Any:
            return fn(request)

        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=request_type.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),  # bytes in, bytes out
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream),
        "ModelMetadata": unary(lambda r: metadata, pb.ModelMetadataRequest),
        "ModelConfig": unary(
            lambda r: pb.ModelConfigResponse(config=config), pb.ModelConfigRequest
        ),
        "ModelStatistics": unary(lambda r: pb.ModelStatisticsResponse(), pb.ModelStatisticsRequest),
        "ServerMetadata": unary(
            lambda r: pb.ServerMetadataResponse(name="noop", version="0"), pb.ServerMetadataRequest
        ),
        "ServerLive": unary(lambda r: pb.ServerLiveResponse(live=True), pb.ServerLiveRequest),
        "ServerReady": unary(lambda r: pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest),
        "ModelReady": unary(
            lambda r: pb.ModelReadyResponse(ready=r.name == info.name), pb.ModelReadyRequest
        ),
    }
    service = V2_INFER.lstrip("/").rpartition("/")[0]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"no-op KServe v2 server for {info.name} on {host}:{bound}", flush=True)
    if ready is not None:
        ready(bound)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.nullserver --repository DIR --model mlp [--port 0]`: serve until
    SIGTERM; prints the bound port (the peers benchmark runs it as its floor)."""
    import argparse
    from pathlib import Path

    from bench.workload import from_repository

    p = argparse.ArgumentParser(prog="python -m bench.nullserver", description=main.__doc__)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_noop(from_repository(args.repository, args.model), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
