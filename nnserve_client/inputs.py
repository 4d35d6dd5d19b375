"""Reading CLI inputs: named features, feature files, images and log event lists.

Images come from .npy arrays, CSV/text files of numbers (64 numbers -> 8x8), and
8-bit PGM (P2/P5) or PNG files, decoded here without Pillow.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np


class InputError(ValueError):
    """Unusable user input (bad flag value, unreadable or malformed file)."""


# ---------------------------------------------------------------- features


def parse_features(pairs: list[str]) -> dict[str, float]:
    """``["age=35", "income=4200"]`` -> ``{"age": 35.0, "income": 4200.0}``."""
    features: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--feature wants NAME=VALUE, got {pair!r}")
        try:
            features[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"feature {name.strip()!r}: {value!r} is not a number") from None
    return features


def read_feature_file(path: Path) -> list[dict[str, float]]:
    """A JSON object of feature -> value, or a list of such objects (one per row)."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: {err}") from None
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: expected a JSON object of features or a list of them")
    try:
        return [{str(k): float(v) for k, v in row.items()} for row in rows]
    except (TypeError, ValueError):
        raise InputError(f"{path}: every feature value must be a number") from None


# ---------------------------------------------------------------- events


def parse_events(text: str) -> list[str] | list[int]:
    """Comma- or newline-separated event names; ``#`` starts a comment line.

    If every event is a decimal integer the list is token ids instead of names.
    """
    events = [
        e.strip()
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for e in line.split(",")
    ]
    events = [e for e in events if e]
    if not events:
        raise InputError("no events given")
    if all(re.fullmatch(r"\d+", e) for e in events):
        return [int(e) for e in events]
    return events


# ---------------------------------------------------------------- images


def read_image(path: Path) -> np.ndarray:
    """One image as a (H, W) array: uint8 for 0..255 pixels, float otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            image = np.load(io.BytesIO(data), allow_pickle=False)
        elif suffix == ".png":
            image = _decode_png(data)
        elif suffix in (".pgm", ".pnm"):
            image = _decode_pgm(data)
        else:  # .csv, .txt, anything else: numbers separated by commas or whitespace
            image = _decode_numbers(data.decode())
    except (ValueError, UnicodeDecodeError, zlib.error, struct.error) as err:
        raise InputError(f"{path}: {err}") from None
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]  # (1, H, W) -> (H, W)
    if image.ndim != 2:
        raise InputError(f"{path}: expected one 2-D image, got shape {image.shape}")
    return image


def _decode_numbers(text: str) -> np.ndarray:
    values = [float(v) for v in re.split(r"[,\s;]+", text.strip()) if v]
    side = math.isqrt(len(values))
    if not values or side * side != len(values):
        raise ValueError(f"{len(values)} numbers do not make a square image (64 -> 8x8)")
    return np.array(values, dtype=np.float32).reshape(side, side)  # (H, W)


def _decode_pgm(data: bytes) -> np.ndarray:
    """Netpbm greymap: P2 (ASCII) or P5 (binary), any maxval, -> uint8 (H, W)."""
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:  # magic, width, height, maxval; '#' comments between them
        match = re.compile(rb"\s*(?:#[^\n]*\n\s*)*(\S+)").match(data, pos)
        if match is None:
            raise ValueError("truncated PGM header")
        tokens.append(match.group(1))
        pos = match.end()
    magic, width, height, maxval = tokens[0], int(tokens[1]), int(tokens[2]), int(tokens[3])
    count = width * height
    if magic == b"P2":
        values = np.array([int(v) for v in data[pos:].split()[:count]], dtype=np.int64)
    elif magic == b"P5":
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        values = np.frombuffer(data, dtype=dtype, count=count, offset=pos + 1).astype(np.int64)
    else:
        raise ValueError(f"not a PGM greymap (magic {magic!r}; P2 and P5 are supported)")
    if values.size != count:
        raise ValueError(f"PGM has {values.size} pixels, header says {width}x{height}")
    pixels = values.reshape(height, width)  # (H, W)
    if maxval != 255:
        pixels = np.rint(pixels * (255.0 / maxval))
    return pixels.astype(np.uint8)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


def _decode_png(data: bytes) -> np.ndarray:
    """8-bit, non-interlaced grey / grey+alpha / RGB / RGBA PNG -> uint8 grey (H, W)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, idat, header = len(_PNG_SIGNATURE), [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length  # length, type, body, crc
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or interlace != 0 or colour not in _PNG_CHANNELS:
        raise ValueError("only 8-bit, non-interlaced grey or RGB(A) PNGs are supported")
    bpp = _PNG_CHANNELS[colour]
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG image data has the wrong size")
    rows = np.zeros((height, stride), dtype=np.uint8)  # (H, W * channels)
    prev = [0] * stride
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], raw[start + 1 : start + 1 + stride]
        cur = [0] * stride
        for i, x in enumerate(line):
            a = cur[i - bpp] if i >= bpp else 0  # left
            b = prev[i]  # up
            c = prev[i - bpp] if i >= bpp else 0  # up-left
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                raise ValueError(f"bad PNG filter type {kind}")
            cur[i] = (x + pred) & 0xFF
        rows[y] = cur
        prev = cur
    pixels = rows.reshape(height, width, bpp)  # (H, W, C)
    if bpp <= 2:  # grey, grey+alpha: drop alpha
        return np.ascontiguousarray(pixels[:, :, 0])
    rgb = pixels[:, :, :3].astype(np.float32)
    return np.rint(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.uint8)


def sample_digit(index: int) -> tuple[np.ndarray, int]:
    """Image ``index`` of scikit-learn's 8x8 digits (float 0..16) and its true label."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("--sample needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    if not 0 <= index < len(digits.images):
        raise InputError(f"--sample must be in 0..{len(digits.images) - 1}")
    return digits.images[index].astype(np.float32), int(digits.target[index])
