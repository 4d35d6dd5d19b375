"""The no-op KServe v2 server: the floor of a Python gRPC server on this machine.

`python -m bench.nullserver --repository DIR --model mlp [--front aio|native]` serves one
model until SIGTERM. ModelInfer does no work: the request stays bytes and the answer is
fixed bytes (nnserve's response shape, zeros), precomputed once; the request id is
echoed because perf_analyzer's async mode matches answers by id. Metadata, config and
readiness answer fixed bytes too, so readiness probes and perf_analyzer work.

Fronts: `aio`, a grpc.aio server, which also answers ModelStreamInfer (each message as
ModelInfer); `native`, pygrpc-native's NativeGrpcFront, whose calls reach Python in
batches (unary only: it has no bidirectional streams). The port is 0; the bound one is
written to NNSERVE_PORTS_FILE as the services write it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.workload import V2_INFER, ModelInfo, from_repository
from contract.model import V2_TO_NUMPY
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc

SERVICE = V2_INFER.lstrip("/").rpartition("/")[0]
STREAM = "ModelStreamInfer"


def noop_response(info: ModelInfo) -> bytes:
    """What nnserve answers to one batch-1 request of this model, outputs as raw zeros."""
    response = pb.ModelInferResponse(model_name=info.name, model_version="1")
    for tensor in info.outputs:
        shape = [1, *(d if d > 0 else 1 for d in tensor.shape[1:])]
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        size = int(np.prod(shape)) * V2_TO_NUMPY[tensor.datatype].itemsize
        response.raw_output_contents.append(b"\0" * size)
    return response.SerializeToString()


def answers(info: ModelInfo) -> dict[str, bytes]:
    """Method name -> its fixed answer. Tensors as nnserve and Triton report them: a
    batch-only input ([-1], e.g. lengths) as [-1, 1] in metadata, dims [1] reshape []."""
    metadata = pb.ModelMetadataResponse(name=info.name, versions=["1"], platform="noop")
    max_batch = info.spec.serving.max_batch_size if info.spec else 64
    config = mc.ModelConfig(name=info.name, platform="noop", max_batch_size=max_batch)
    for tensors, meta, conf in (
        (info.inputs, metadata.inputs, config.input),
        (info.outputs, metadata.outputs, config.output),
    ):
        for t in tensors:
            meta.add(
                name=t.name, datatype=t.datatype, shape=list(t.shape) if t.shape[1:] else [-1, 1]
            )
            c = conf.add(
                name=t.name,
                data_type=mc.DataType.Value("TYPE_" + t.datatype),
                dims=list(t.shape[1:]) or [1],
            )
            if not t.shape[1:]:
                c.reshape.SetInParent()
    return {
        "ModelInfer": noop_response(info),
        "ModelMetadata": metadata.SerializeToString(),
        "ModelConfig": pb.ModelConfigResponse(config=config).SerializeToString(),
        "ModelStatistics": pb.ModelStatisticsResponse().SerializeToString(),
        "ServerMetadata": pb.ServerMetadataResponse(name="noop", version="0").SerializeToString(),
        "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
        "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
        "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString(),
    }


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


def infer_answer(fixed: bytes, request: bytes) -> bytes:
    """The fixed answer with the request's id appended (protobuf: a later field wins)."""
    rid = request_id(request)
    return fixed + b"\x1a" + _varint(len(rid)) + rid if rid else fixed


def _announce(host: str, port: int, model: str, front: str) -> None:
    print(f"no-op KServe v2 server ({front}) for {model} on {host}:{port}", flush=True)
    ports_file = os.environ.get("NNSERVE_PORTS_FILE")
    if ports_file:
        from services.rpc.server import write_ports_file

        write_ports_file(Path(ports_file), port, None)


async def serve_aio(info: ModelInfo, host: str) -> None:
    import grpc

    fixed = answers(info)

    def constant(answer: bytes) -> Any:
        async def handler(request: bytes, context: Any) -> bytes:
            return answer

        return grpc.unary_unary_rpc_method_handler(handler)  # bytes in, bytes out

    async def infer(request: bytes, context: Any) -> bytes:
        return infer_answer(fixed["ModelInfer"], request)

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:  # each answer: ModelStreamInferResponse.infer_response
            inner = infer_answer(fixed["ModelInfer"], request)
            yield b"\x12" + _varint(len(inner)) + inner

    handlers = {name: constant(answer) for name, answer in fixed.items()}
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(infer)
    handlers[STREAM] = grpc.stream_stream_rpc_method_handler(stream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    _announce(host, port, info.name, "aio")
    await server.wait_for_termination()


def serve_native(info: ModelInfo, host: str) -> None:
    from pygrpc_native import EVENT_CALL, NativeGrpcFront

    fixed = answers(info)
    names = list(fixed)
    # One I/O thread, as the services' native front by default (NNSERVE_NATIVE_IO_THREADS).
    front = NativeGrpcFront(f"{host}:0", [(f"/{SERVICE}/{n}", False) for n in names], io_threads=1)
    answer_of = [fixed[n] for n in names]  # by method id: the order registered
    infer_id = names.index("ModelInfer")
    front.start()
    _announce(host, front.bound_port, info.name, "native")
    while (events := front.recv_batch(64)) is not None:  # until SIGTERM ends the process
        for kind, call_id, method_id, payload, _ in events:
            if kind != EVENT_CALL:
                continue  # a cancel: nothing to undo
            answer = answer_of[method_id]
            if method_id == infer_id and payload:
                answer = infer_answer(answer, payload)
            front.respond(call_id, answer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.nullserver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--front", choices=["aio", "native"], default="aio")
    args = p.parse_args(argv)
    info = from_repository(args.repository, args.model)
    with contextlib.suppress(KeyboardInterrupt):
        if args.front == "native":
            serve_native(info, args.host)
        else:
            asyncio.run(serve_aio(info, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
