"""Strict reader and writer for IDX files (the MNIST / Fashion-MNIST file format).

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the raw values.  tlbench reads the uint8 flavour
only: ``0x00000801`` (labels, shape [N]) and ``0x00000803`` (images, shape [N, H, W]);
``0x00000804`` ([N, H, W, C], colour images) is accepted too.  Every defect (not an IDX
file, truncated or oversized data, broken gzip, another dtype) becomes a one-line
:class:`TlbenchError` naming the file, because a silently misread dataset would poison
every number computed from it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from tlbench.api.errors import TlbenchError
from tlbench.store.safeio import atomic_write

PathLike = Union[str, "os.PathLike[str]"]

UINT8_CODE = 0x08
_DTYPE_NAMES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_NDIM_BY_KIND = {"labels": (1,), "images": (3, 4)}
_SUPPORTED_NDIM = (1, 3, 4)
_GZIP_MAGIC = b"\x1f\x8b"
_EXPECTED = "expected 0x00000801 (uint8 labels) or 0x00000803 (uint8 images)"


def read_idx(path: PathLike, *, expect: Optional[str] = None) -> torch.Tensor:
    """Parse an IDX file (raw or gzip) into a tensor: int64 labels or uint8 images.

    ``expect`` (``"labels"`` or ``"images"``) additionally checks the kind, so a
    swapped images/labels file is reported instead of failing later with a shape error.
    Gzip is detected from the content, not the name, so an already-decompressed file
    that kept its ``.gz`` name still reads.
    """
    if expect is not None and expect not in _NDIM_BY_KIND:
        raise ValueError(f"expect must be 'labels' or 'images', not {expect!r}")
    data = _decompressed_bytes(Path(path))
    dims, offset = _parse_header(data, path, expect)
    array = np.frombuffer(data, dtype=np.uint8, count=_product(dims), offset=offset)
    tensor = torch.from_numpy(array.reshape(dims).copy())
    return tensor.long() if len(dims) == 1 else tensor


def read_idx_pair(
    images_path: PathLike, labels_path: PathLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read matching image and label files; their counts must agree."""
    images = read_idx(images_path, expect="images")
    labels = read_idx(labels_path, expect="labels")
    if images.shape[0] != labels.shape[0]:
        raise TlbenchError(
            f"IDX count mismatch: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels; expected one label per image "
            f"(are the files from the same dataset and split?)."
        )
    return images, labels


def write_idx(path: PathLike, array: Union[np.ndarray, torch.Tensor]) -> Path:
    """Write uint8 labels [N] or images [N, H, W] (or [N, H, W, C]) as IDX; gzip if ``.gz``."""
    values = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if values.ndim not in _SUPPORTED_NDIM:
        raise ValueError(f"IDX arrays must have 1, 3 or 4 dimensions, got shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("IDX values must fit in uint8 (0..255)")
    header = struct.pack(f">BBBB{values.ndim}I", 0, 0, UINT8_CODE, values.ndim, *values.shape)
    payload = header + np.ascontiguousarray(values, dtype=np.uint8).tobytes()
    path = Path(path)
    return atomic_write(path, gzip.compress(payload) if path.name.endswith(".gz") else payload)


def _decompressed_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlbenchError(f"cannot read IDX file {path}: {exc.strerror or exc}.") from exc
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise TlbenchError(
            f"corrupt gzip file {path} ({exc}); expected a complete gzip-compressed IDX "
            f"file: delete it and copy or download it again."
        ) from exc


def _parse_header(
    data: bytes, path: PathLike, expect: Optional[str]
) -> tuple[tuple[int, ...], int]:
    if len(data) < 4:
        raise TlbenchError(
            f"{path} is not an IDX file: only {len(data)} bytes, too short for the "
            f"4-byte magic number; {_EXPECTED}."
        )
    zero1, zero2, code, ndim = data[:4]
    magic = int.from_bytes(data[:4], "big")
    if zero1 or zero2:
        raise TlbenchError(f"{path} is not an IDX file: magic number 0x{magic:08X}; {_EXPECTED}.")
    if code != UINT8_CODE:
        name = _DTYPE_NAMES.get(code, "unknown")
        raise TlbenchError(
            f"unsupported IDX dtype code 0x{code:02X} ({name}) in {path}; tlbench reads "
            f"uint8 IDX files only: {_EXPECTED}."
        )
    _check_ndim(path, magic, ndim, expect)
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise TlbenchError(
            f"truncated IDX file {path}: header announces {ndim} dimensions "
            f"({offset} header bytes) but the file has only {len(data)} bytes."
        )
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    _check_size(path, dims, len(data) - offset)
    return dims, offset


def _check_ndim(path: PathLike, magic: int, ndim: int, expect: Optional[str]) -> None:
    allowed = _NDIM_BY_KIND[expect] if expect else _SUPPORTED_NDIM
    if ndim in allowed:
        return
    wanted = {"labels": "0x00000801 (uint8 labels)", "images": "0x00000803 (uint8 images)"}
    expected = f"expected {wanted[expect]}" if expect else _EXPECTED
    raise TlbenchError(
        f"wrong IDX magic number 0x{magic:08X} ({ndim} dimensions) in {path}; {expected}."
    )


def _check_size(path: PathLike, dims: tuple[int, ...], payload: int) -> None:
    needed = _product(dims)
    if payload == needed:
        return
    shape = " x ".join(str(d) for d in dims)
    problem = "truncated IDX file" if payload < needed else "IDX file with trailing bytes"
    raise TlbenchError(
        f"{problem} {path}: header dimensions {shape} need {needed} data bytes "
        f"but the file holds {payload}; expected a complete, unmodified IDX file."
    )


def _product(dims: tuple[int, ...]) -> int:
    total = 1
    for d in dims:
        total *= d
    return total
