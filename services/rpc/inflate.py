"""Bounded decompression of request messages (the grpc.aio server's deserializers).

gRPC core inflates a compressed message whole before it checks the message size: a
1 GiB gzip bomb (about 1 MB on the wire) costs the process over 1 GB before it is
refused. The server therefore turns core's per-message decompression off
(`grpc.per_message_decompression` 0, services/rpc/server.py) and the interceptor's
deserializer inflates here, never past max_message_bytes: a first pass measures the
inflated size in fixed-size pieces and drops them (a bomb is refused having cost a
quarter of a MiB), a second inflates a message within the bound into one buffer.

Core then hands over the message bytes as they arrived and does not say whether they
are compressed: `grpc-encoding` is not in the invocation metadata, and a call that
compresses may still send a message uncompressed (core does when compressing would not
shrink it). The bytes tell:

- gzip starts with 1f 8b. No protobuf message can (0x1f is field 3 with wire type 7,
  which does not exist), so gzip is recognised exactly.
- deflate (gRPC's "deflate" is zlib, RFC 1950) starts with a two-byte header (method 8,
  window at most 32 KiB, no preset dictionary, a multiple of 31 as a 16-bit number).
  Those bytes can also begin a protobuf message (0x78 is field 15 as a varint), so a
  message with a zlib header that does not inflate to a complete stream with a valid
  Adler-32 checksum is taken as it arrived. Only a plain message that is itself a valid
  zlib stream (checksum included) would be misread: not a practical concern.

A message that inflates past the bound is RESOURCE_EXHAUSTED; a gzip message that does
not inflate is INVALID_ARGUMENT. Neither message quotes the client's bytes.
"""

from __future__ import annotations

import zlib

from services.errors import InvalidInput, TooLarge

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer
_ZLIB_WBITS = zlib.MAX_WBITS  # zlib header and trailer (gRPC's "deflate")


def is_gzip(data: bytes) -> bool:
    return data[:2] == GZIP_MAGIC


def has_zlib_header(data: bytes) -> bool:
    """RFC 1950 section 2.2: CM 8, CINFO <= 7, FDICT clear, (CMF*256 + FLG) % 31 == 0."""
    if len(data) < 2:
        return False
    cmf, flg = data[0], data[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf << 8 | flg) % 31 == 0


def too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"request message inflates to more than {limit} bytes (max_message_bytes); "
        "send smaller messages"
    )


class _Malformed(Exception):
    """The bytes are not one complete compressed stream."""


_IN_CHUNK = 64 * 1024  # input fed at a time: zlib copies what it has not consumed
_OUT_CHUNK = 256 * 1024  # output produced (and dropped) at a time while measuring


def _inflated_size(data: bytes, wbits: int, limit: int) -> int:
    """The size `data` inflates to, found without keeping the output (a bomb costs
    _OUT_CHUNK of memory); TooLarge past `limit`, _Malformed unless `data` is exactly
    one complete stream."""
    inflater = zlib.decompressobj(wbits)
    size = 0
    view = memoryview(data)
    try:
        for start in range(0, len(data), _IN_CHUNK):
            pending: bytes | memoryview = view[start : start + _IN_CHUNK]
            while True:
                out = inflater.decompress(pending, _OUT_CHUNK)
                size += len(out)
                if size > limit:
                    raise too_large(limit)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    if inflater.unused_data or start + _IN_CHUNK < len(data):
                        raise _Malformed()  # bytes after the end of the stream
                    return size
                if not pending and not out:
                    break  # this slice is used up: feed the next
    except zlib.error:
        raise _Malformed() from None
    raise _Malformed()  # the input ended before the stream did


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """`data` inflated, at most `limit` bytes: measured first, then inflated into one
    buffer of the right size."""
    size = _inflated_size(data, wbits, limit)
    return zlib.decompress(data, wbits, max(size, 1))


def inflated(data: bytes, limit: int) -> bytes:
    """The message's protobuf bytes: inflated (bounded by `limit`) when compressed,
    else `data` itself. Raises a ServingError for a bomb or broken gzip."""
    if is_gzip(data):
        try:
            return _inflate(data, _GZIP_WBITS, limit)
        except _Malformed:
            raise InvalidInput(
                "the request message cannot be decompressed (malformed gzip)"
            ) from None
    if has_zlib_header(data):
        try:
            return _inflate(data, _ZLIB_WBITS, limit)
        except _Malformed:
            return data  # a plain message that happens to start like zlib
    return data
