"""Small generated datasets shaped like the real ones: hub parquet shards, COCO json, manifests."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pixels(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (0 or huge), with an empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def person(seed: int, width: int, height: int) -> np.ndarray:
    """(17, 3) keypoints inside a ``width`` x ``height`` image, visibility 0, 1 or 2."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (17, 2)) * [width - 1, height - 1]
    v = rng.choice([0, 1, 2], size=(17, 1), p=[0.1, 0.2, 0.7])
    v[5] = 2  # at least one labelled joint
    return np.concatenate([xy.round(2), v], axis=1)


class Factory:
    """Writes small datasets under ``root``."""

    pixels = staticmethod(pixels)
    encode = staticmethod(encode)
    png_header = staticmethod(png_header)
    person = staticmethod(person)

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, relpath: str, data: bytes | np.ndarray, fmt: str = "PNG") -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(data, fmt) if isinstance(data, np.ndarray) else data)
        return path

    def manifest(self, rows: list[dict], name: str = "manifest.jsonl") -> Path:
        path = self.root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def hub(self, folder: str, split: str, shards: list[dict], features: dict) -> Path:
        """Parquet shards as the hub stores them: data/<split>-0000k-of-0000n.parquet, image
        columns as datasets Image features (struct {bytes, path}) with the features in the
        parquet's 'huggingface' metadata."""
        from datasets import Dataset, Features

        root = self.root / folder
        (root / "data").mkdir(parents=True, exist_ok=True)
        for k, columns in enumerate(shards):
            name = f"{split}-{k:05d}-of-{len(shards):05d}.parquet"
            Dataset.from_dict(columns, features=Features(features)).to_parquet(root / "data" / name)
        return root


@pytest.fixture
def make(tmp_path: Path) -> Factory:
    return Factory(tmp_path)
