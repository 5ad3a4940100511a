"""Join MP4 files that hold one video track encoded alike (the parts of one annotated video, each written by
:class:`~.writers.VideoWriter` on its own worker) into one MP4, without decoding: the samples are copied in order
and the sample tables rebuilt (ISO/IEC 14496-12). Each part starts with a keyframe, so the joined stream decodes
from any part's start."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .writers import WriterError, _temp_path

CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"})
COPY_BLOCK = 1 << 24


@dataclass
class Box:
    """An MP4 box: ``payload`` for a leaf, ``children`` for a container."""

    kind: bytes
    payload: bytes = b""
    children: list["Box"] | None = None

    def find(self, *path: bytes) -> "Box":
        box = self
        for kind in path:
            box = next((c for c in box.children or [] if c.kind == kind), None)
            if box is None:
                raise WriterError(f"MP4 without a {kind.decode()} box")
        return box

    def has(self, kind: bytes) -> bool:
        return any(c.kind == kind for c in self.children or [])

    def encode(self) -> bytes:
        body = self.payload if self.children is None else b"".join(c.encode() for c in self.children)
        return struct.pack(">I4s", 8 + len(body), self.kind) + body


def _parse(data: bytes) -> list[Box]:
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif size == 0:
            size = len(data) - offset
        body = data[offset + header : offset + size]
        boxes.append(Box(kind, children=_parse(body)) if kind in CONTAINERS else Box(kind, body))
        offset += size
    return boxes


def _top_level(path: Path) -> dict[bytes, tuple[int, int, int]]:
    """Top-level boxes of a file → (offset, header size, total size), read without loading ``mdat``."""
    boxes: dict[bytes, tuple[int, int, int]] = {}
    size_of_file = path.stat().st_size
    with open(path, "rb") as handle:
        offset = 0
        while offset + 8 <= size_of_file:
            handle.seek(offset)
            size, kind = struct.unpack(">I4s", handle.read(8))
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", handle.read(8))[0], 16
            elif size == 0:
                size = size_of_file - offset
            if size < header:
                raise WriterError(f"{path}: corrupt MP4 box {kind!r}")
            boxes.setdefault(kind, (offset, header, size))
            offset += size
    return boxes


def _read(path: Path, span: tuple[int, int, int]) -> bytes:
    offset, header, size = span
    with open(path, "rb") as handle:
        handle.seek(offset + header)
        return handle.read(size - header)


def _table(box: Box, fields: str) -> list[tuple[int, ...]]:
    """The entries of a full box ``version/flags, count, entries``, each entry ``fields`` (struct format)."""
    (count,) = struct.unpack_from(">I", box.payload, 4)
    return list(struct.iter_unpack(">" + fields, box.payload[8 : 8 + count * struct.calcsize(">" + fields)]))


def _full(entries: Sequence[Sequence[int]], fields: str) -> bytes:
    return b"\0\0\0\0" + struct.pack(">I", len(entries)) + b"".join(struct.pack(">" + fields, *e) for e in entries)


@dataclass
class _Part:
    path: Path
    moov: Box
    sizes: list[int]
    chunks: list[tuple[int, int]]
    """(file offset, byte length) of every chunk."""
    stsc: list[tuple[int, int, int]]
    stts: list[tuple[int, int]]
    sync: list[int] | None

    @classmethod
    def read(cls, path: Path) -> "_Part":
        boxes = _top_level(path)
        if b"moov" not in boxes or b"mdat" not in boxes:
            raise WriterError(f"{path}: not a complete MP4 (no moov or mdat)")
        moov = Box(b"moov", children=_parse(_read(path, boxes[b"moov"])))
        if sum(c.kind == b"trak" for c in moov.children or []) != 1:
            raise WriterError(f"{path}: expected one track")
        stbl = moov.find(b"trak", b"mdia", b"minf", b"stbl")
        if stbl.has(b"ctts"):
            raise WriterError(f"{path}: reordered frames (ctts) are not supported")
        stsz = stbl.find(b"stsz").payload
        fixed, count = struct.unpack_from(">II", stsz, 4)
        sizes = [fixed] * count if fixed else [s for (s,) in struct.iter_unpack(">I", stsz[12 : 12 + 4 * count])]
        offsets = [o for (o,) in _table(stbl.find(b"co64"), "Q")] if stbl.has(b"co64") else [
            o for (o,) in _table(stbl.find(b"stco"), "I")]
        stsc = _table(stbl.find(b"stsc"), "III")
        per_chunk = []
        for i, (first, samples, _) in enumerate(stsc):
            last = stsc[i + 1][0] - 1 if i + 1 < len(stsc) else len(offsets)
            per_chunk += [samples] * (last - first + 1)
        if sum(per_chunk) != len(sizes):
            raise WriterError(f"{path}: sample tables disagree")
        chunks, sample = [], 0
        for offset, samples in zip(offsets, per_chunk):
            chunks.append((offset, sum(sizes[sample : sample + samples])))
            sample += samples
        sync = [n for (n,) in _table(stbl.find(b"stss"), "I")] if stbl.has(b"stss") else None
        return cls(path, moov, sizes, chunks, stsc, _table(stbl.find(b"stts"), "II"), sync)

    def codec(self) -> bytes:
        """What must agree for the parts' streams to join: the sample entry's type and frame size and the decoder
        configuration (mp4v: esds' DecoderSpecificInfo), not the bitrate figures, which differ from part to part."""
        stsd = self.moov.find(b"trak", b"mdia", b"minf", b"stbl", b"stsd").payload
        entry = stsd[8:]
        at = entry.find(b"esds")
        return entry[4:8] + entry[32:36] + (_decoder_info(entry[at + 8 :]) if at >= 0 else entry)


def _decoder_info(esds: bytes) -> bytes:
    """The DecoderSpecificInfo of an esds body (after its version and flags)."""
    i = 0
    while i < len(esds):
        tag, length = esds[i], 0
        i += 1
        while i < len(esds):
            byte = esds[i]
            i += 1
            length = length << 7 | byte & 0x7F
            if byte < 0x80:
                break
        if tag == 0x03:
            flags = esds[i + 2]
            i += 3 + 2 * bool(flags & 0x80) + 2 * bool(flags & 0x20)
            i += 1 + esds[i] if flags & 0x40 else 0
        elif tag == 0x04:
            i += 13
        elif tag == 0x05:
            return esds[i : i + length]
        else:
            i += length
    return esds


def _timescale(box: Box) -> int:
    """Timescale of an mvhd or mdhd box."""
    return struct.unpack_from(">I", box.payload, 20 if box.payload[0] == 1 else 12)[0]


def _set_duration(box: Box, duration: int) -> None:
    """Write ``duration`` into an mvhd, mdhd or tkhd box."""
    version = box.payload[0]
    offset = {b"mvhd": (16, 24), b"mdhd": (16, 24), b"tkhd": (20, 28)}[box.kind][version]
    if version == 0 and duration >= 1 << 32:
        raise WriterError("joined video too long for a version-0 MP4 header")
    packed = struct.pack(">Q" if version else ">I", duration)
    box.payload = box.payload[:offset] + packed + box.payload[offset + len(packed) :]


def concat_mp4(parts: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str]) -> Path:
    """Join ``parts`` (same codec settings, as the stsd boxes show) into ``dest``, written atomically."""
    dest = Path(dest)
    loaded = [_Part.read(Path(p)) for p in parts]
    if not loaded:
        raise WriterError(f"{dest}: nothing to join")
    first = loaded[0]
    if any(part.codec() != first.codec() for part in loaded[1:]):
        raise WriterError(f"{dest}: the parts were encoded differently (sample descriptions differ)")
    stts: list[list[int]] = []
    stsc: list[tuple[int, int, int]] = []
    sync: list[int] = []
    sizes: list[int] = []
    chunk_count = 0
    for part in loaded:
        for count, delta in part.stts:
            if stts and stts[-1][1] == delta:
                stts[-1][0] += count
            else:
                stts.append([count, delta])
        stsc += [(first_chunk + chunk_count, samples, index) for first_chunk, samples, index in part.stsc]
        sync += [len(sizes) + n for n in (part.sync if part.sync is not None else range(1, len(part.sizes) + 1))]
        sizes += part.sizes
        chunk_count += len(part.chunks)
    ftyp = _read(first.path, _top_level(first.path)[b"ftyp"])
    head = Box(b"ftyp", ftyp).encode()
    data_size = sum(length for part in loaded for _, length in part.chunks)
    large = data_size + 8 >= 1 << 32
    mdat_header = struct.pack(">I4sQ", 1, b"mdat", data_size + 16) if large else struct.pack(">I4s", data_size + 8, b"mdat")
    offsets, position = [], len(head) + len(mdat_header)
    for part in loaded:
        for _, length in part.chunks:
            offsets.append(position)
            position += length

    moov = first.moov
    trak = moov.find(b"trak")
    stbl = trak.find(b"mdia", b"minf", b"stbl")
    media_duration = sum(count * delta for count, delta in stts)
    movie_duration = round(media_duration * _timescale(moov.find(b"mvhd")) / _timescale(trak.find(b"mdia", b"mdhd")))
    tables = {
        b"stts": _full(stts, "II"),
        b"stsc": _full(stsc, "III"),
        b"stsz": b"\0\0\0\0" + struct.pack(">II", 0, len(sizes)) + b"".join(struct.pack(">I", s) for s in sizes),
        b"stss": _full([(n,) for n in sync], "I"),
    }
    if all(part.sync is None for part in loaded):
        del tables[b"stss"]
    chunk_box = Box(b"co64", _full([(o,) for o in offsets], "Q")) if offsets[-1] >= 1 << 32 else Box(
        b"stco", _full([(o,) for o in offsets], "I"))
    children = []
    for child in stbl.children or []:
        if child.kind in (b"stco", b"co64"):
            children.append(chunk_box)
        elif child.kind in tables:
            children.append(Box(child.kind, tables.pop(child.kind)))
        else:
            children.append(child)
    stbl.children = children + [Box(kind, payload) for kind, payload in tables.items()]
    _set_duration(moov.find(b"mvhd"), movie_duration)
    _set_duration(trak.find(b"tkhd"), movie_duration)
    _set_duration(trak.find(b"mdia", b"mdhd"), media_duration)
    if trak.has(b"edts"):
        elst = trak.find(b"edts", b"elst")
        entries = _table(elst, "qqI" if elst.payload[0] else "iiI")
        if len(entries) != 1 or entries[0][1] != 0:
            raise WriterError(f"{first.path}: edit lists other than one plain entry are not supported")
        elst.payload = b"\x01\0\0\0" + struct.pack(">IqqI", 1, movie_duration, 0, entries[0][2])

    tmp = _temp_path(dest)
    try:
        with open(tmp, "wb") as out:
            out.write(head + mdat_header)
            for part in loaded:
                with open(part.path, "rb") as source:
                    for offset, length in part.chunks:
                        source.seek(offset)
                        _copy(source, out, length, part.path)
            out.write(moov.encode())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriterError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    return dest


def _copy(source, out, length: int, path: Path) -> None:
    while length > 0:
        block = source.read(min(length, COPY_BLOCK))
        if not block:
            raise WriterError(f"{path}: shorter than its sample tables")
        out.write(block)
        length -= len(block)


__all__ = ["concat_mp4"]
