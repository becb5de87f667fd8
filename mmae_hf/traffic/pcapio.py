"""Streaming reader for pcap and pcapng containers.

The file is read in blocks of a few MiB. A tight Python loop walks only over the record (block) headers to find
where each frame starts; every per-packet field (timestamps, lengths, link type) is then gathered for the whole
block at once with numpy fancy indexing. Memory is bounded by the block size, not by the file size.

Damage (an impossible record length, a file that ends inside a record) stops the reading with a message that names
the file and the byte offset; everything read before it is delivered first.
"""

import io
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..data_contract import PCAP_MAGICS as _PCAP_MAGICS, PCAPNG_MAGIC as _PCAPNG_SHB
from .core import PcapFormatError

BLOCK_SIZE = 4 << 20
MAX_RECORD = 1 << 18  # 256 KiB: larger than any real frame (jumbo frames, 64 KiB GRO/TSO, USB captures)
MAX_PCAPNG_BLOCK = 1 << 24


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def special_file_kind(path) -> str | None:
    """``"FIFO"``, ``"socket"``, ``"character device"`` or ``"block device"`` for such a path (symlinks followed),
    else None. Reading one could block forever (a FIFO without writer) or never end (``/dev/zero``): callers skip
    them without opening them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((name for test, name in _SPECIAL_FILES if test(mode)), None)


@dataclass
class RecordChunk:
    """Frames of one read block. ``data`` is a uint8 view of the block; offsets index into it."""

    data: np.ndarray  # uint8 [block bytes]
    frame_offset: np.ndarray  # int64 [n] start of each frame in ``data``
    caplen: np.ndarray  # int64 [n] captured bytes
    origlen: np.ndarray  # int64 [n] length on the wire
    timestamp: np.ndarray  # float64 [n] epoch seconds
    linktype: np.ndarray  # int32 [n]
    file_offset: np.ndarray  # int64 [n] byte offset of each record in the file (for messages)

    def __len__(self) -> int:
        return len(self.frame_offset)

    def head(self, count: int) -> "RecordChunk":
        """The first ``count`` records."""
        return RecordChunk(
            self.data, self.frame_offset[:count], self.caplen[:count], self.origlen[:count],
            self.timestamp[:count], self.linktype[:count], self.file_offset[:count],
        )  # fmt: skip


class CaptureReader:
    """Iterate over ``RecordChunk``s of a pcap or pcapng capture.

    Args:
        source: path, bytes-like object, or binary file object.
        source_name: name used in messages (defaults to the path).
        strict: raise ``PcapFormatError`` on damage; otherwise stop at the damage and record the message in
            ``self.errors``.
        block_size: bytes read per block (default ``BLOCK_SIZE``, 4 MiB).
    """

    def __init__(self, source, source_name: str | None = None, strict: bool = False, block_size: int | None = None):
        self.source = source
        if source_name is None:
            source_name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
        self.name = source_name
        self.strict = strict
        self.block_size = block_size or BLOCK_SIZE
        self.errors: list[str] = []
        self.format = None

    def _open(self) -> tuple[BinaryIO, bool]:
        if isinstance(self.source, (str, os.PathLike)):
            return open(self.source, "rb"), True
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            return io.BytesIO(self.source), True
        return self.source, False

    def _damage(self, offset: int | None, problem: str) -> None:
        err = PcapFormatError(self.name, offset, problem)
        if self.strict:
            raise err
        self.errors.append(str(err))

    def __iter__(self) -> Iterator[RecordChunk]:
        if isinstance(self.source, (str, os.PathLike)):
            kind = special_file_kind(self.source)
            if kind is not None:
                self._damage(None, f"not a regular file ({kind}), not read")
                return
        fh, close = self._open()
        try:
            head = fh.read(4)
            if len(head) < 4:
                self._damage(0, f"file too short for a capture header ({len(head)} bytes)")
                return
            if head in _PCAP_MAGICS:
                self.format = "pcap"
                yield from self._read_pcap(fh, head)
            elif head == _PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._read_pcapng(fh, head)
            else:
                self._damage(0, f"not a pcap or pcapng file (magic {head.hex()})")
        finally:
            if close:
                fh.close()

    # ---------------------------------------------------------------- classic pcap
    def _read_pcap(self, fh: BinaryIO, magic: bytes) -> Iterator[RecordChunk]:
        endian, tick = _PCAP_MAGICS[magic]
        rest = fh.read(20)
        if len(rest) < 20:
            self._damage(0, "truncated pcap global header")
            return
        _vmaj, _vmin, _zone, _sigfigs, snaplen, network = struct.unpack(endian + "HHiIII", rest)
        linktype = network & 0xFFFF  # the upper bits of this field carry FCS flags, not the link type
        max_record = max(MAX_RECORD, snaplen if snaplen < (1 << 26) else 0)
        incl_at = struct.Struct(endian + "I").unpack_from
        dt = np.dtype(endian + "u4")
        base = 24  # file offset of buf[0]
        buf = b""
        eof = False
        while not eof:
            more = fh.read(self.block_size)
            if not more:
                eof = True
            buf = buf + more if buf else more
            n = len(buf)
            offs = []
            append = offs.append
            off = 0
            damage = None
            while off + 16 <= n:
                end = off + 16 + incl_at(buf, off + 8)[0]
                if end > n:
                    break
                append(off)
                off = end
            # lengths are checked for the whole block at once; an impossible one ends the reading there
            if off + 16 <= n and incl_at(buf, off + 8)[0] > max_record:
                offs.append(off)
            if offs:
                chunk = self._pcap_chunk(buf, offs, dt, tick, linktype, base)
                bad = np.flatnonzero(chunk.caplen > max_record)
                if len(bad):
                    first = int(bad[0])
                    off = offs[first]
                    damage = (
                        base + off,
                        f"corrupt record header: captured length {int(chunk.caplen[first])} exceeds {max_record}",
                    )
                    chunk = chunk.head(first)
                if len(chunk):
                    yield chunk
            if damage is not None:
                self._damage(*damage)
                return
            if eof and off < n:
                self._damage(base + off, f"file ends inside a record ({n - off} of its bytes present)")
                return
            buf = buf[off:]
            base += off

    @staticmethod
    def _pcap_chunk(buf: bytes, offs: list, dt: np.dtype, tick: float, linktype: int, base: int) -> RecordChunk:
        data = np.frombuffer(buf, dtype=np.uint8)
        rec = np.asarray(offs, dtype=np.int64)
        # gather the four 32-bit header words of every record (16-byte windows, one copy)
        hdr = np.lib.stride_tricks.sliding_window_view(data, 16)[rec].reshape(-1).view(dt).reshape(len(rec), 4)
        hdr = hdr.astype(np.int64)
        ts = hdr[:, 0].astype(np.float64) + hdr[:, 1].astype(np.float64) * tick
        return RecordChunk(
            data=data,
            frame_offset=rec + 16,
            caplen=hdr[:, 2],
            origlen=hdr[:, 3],
            timestamp=ts,
            linktype=np.full(len(rec), linktype, dtype=np.int32),
            file_offset=rec + base,
        )

    # ---------------------------------------------------------------- pcapng
    def _read_pcapng(self, fh: BinaryIO, magic: bytes) -> Iterator[RecordChunk]:
        base = 0
        buf = magic
        eof = False
        endian = None
        u32 = None
        interfaces: list[tuple[int, int, float, int]] = []  # (linktype, ticks per second, offset seconds, snaplen)
        while not eof:
            more = fh.read(self.block_size)
            if not more:
                eof = True
            buf = buf + more if buf else more
            n = len(buf)
            off = 0
            # per record: (block offset, data offset, caplen, origlen, iface, ts_hi, ts_lo) for EPB/PB/SPB
            recs = []
            damage = None
            while off + 12 <= n:
                btype_raw = buf[off : off + 4]
                if btype_raw == _PCAPNG_SHB:
                    bom = buf[off + 8 : off + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        new_endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        new_endian = ">"
                    else:
                        damage = (base + off, f"bad pcapng byte-order magic {bom.hex()}")
                        break
                    blen = struct.unpack_from(new_endian + "I", buf, off + 4)[0]
                else:
                    if endian is None:
                        damage = (base + off, "pcapng block before any section header")
                        break
                    blen = u32(buf, off + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_PCAPNG_BLOCK:
                    damage = (base + off, f"corrupt pcapng block length {blen}")
                    break
                if off + blen > n:
                    break
                if btype_raw == _PCAPNG_SHB:
                    if recs:  # a new section may change byte order: flush what we have
                        yield self._pcapng_chunk(buf, recs, interfaces, base)
                        recs = []
                    endian = new_endian
                    u32 = struct.Struct(endian + "I").unpack_from
                    interfaces = []
                    off += blen
                    continue
                btype = u32(buf, off)[0]
                if btype == 6:  # enhanced packet block
                    iface, hi, lo, cap, orig = struct.unpack_from(endian + "IIIII", buf, off + 8)
                    if iface >= len(interfaces):
                        damage = (base + off, f"packet refers to undeclared interface {iface}")
                        break
                    if cap > blen - 32:
                        damage = (base + off, f"enhanced packet block captured length {cap} exceeds its block")
                        break
                    recs.append((off, off + 28, cap, orig, iface, hi, lo))
                elif btype == 3:  # simple packet block
                    if not interfaces:
                        damage = (base + off, "simple packet block before any interface description")
                        break
                    orig = u32(buf, off + 8)[0]
                    snap = interfaces[0][3] if interfaces else 0
                    cap = min(orig, blen - 16, snap if snap else orig)
                    recs.append((off, off + 12, cap, orig, 0, -1, 0))
                elif btype == 2:  # obsolete packet block
                    iface, _drops, hi, lo, cap, orig = struct.unpack_from(endian + "HHIIII", buf, off + 8)
                    if iface >= len(interfaces):
                        damage = (base + off, f"packet refers to undeclared interface {iface}")
                        break
                    if cap > blen - 32:
                        damage = (base + off, f"packet block captured length {cap} exceeds its block")
                        break
                    recs.append((off, off + 28, cap, orig, iface, hi, lo))
                elif btype == 1:  # interface description block
                    if recs:
                        yield self._pcapng_chunk(buf, recs, interfaces, base)
                        recs = []
                    interfaces.append(self._parse_idb(buf, off, blen, endian))
                off += blen
            if recs:
                yield self._pcapng_chunk(buf, recs, interfaces, base)
            if damage is not None:
                self._damage(*damage)
                return
            if eof and off < n:
                self._damage(base + off, f"file ends inside a pcapng block ({n - off} of its bytes present)")
                return
            buf = buf[off:]
            base += off

    @staticmethod
    def _parse_idb(buf: bytes, off: int, blen: int, endian: str) -> tuple[int, int, float, int]:
        """(link type, ticks per second, if_tsoffset seconds, snap length) of an interface description block.

        ``if_tsresol`` (pcapng spec): most significant bit clear, the unit is 10^-v s; set, 2^-(v & 0x7F) s. Every
        value is valid, including ones finer than a 64-bit tick count can use (e.g. 10^-30); the ticks per second
        are kept as an exact integer for that reason."""
        linktype, _res, snaplen = struct.unpack_from(endian + "HHI", buf, off + 8)
        per_second = 10**6
        ts_offset = 0.0
        pos = off + 16
        end = off + blen - 4
        while pos + 4 <= end:
            code, length = struct.unpack_from(endian + "HH", buf, pos)
            if code == 0:
                break
            value = buf[pos + 4 : pos + 4 + length]
            if code == 9 and length >= 1:  # if_tsresol
                res = value[0]
                per_second = 2 ** (res & 0x7F) if res & 0x80 else 10**res
            elif code == 14 and length >= 8:  # if_tsoffset
                ts_offset = float(struct.unpack(endian + "q", value[:8])[0])
            pos += 4 + ((length + 3) & ~3)
        return linktype, per_second, ts_offset, snaplen

    def _pcapng_chunk(self, buf: bytes, recs: list, interfaces: list, base: int) -> RecordChunk:
        arr = np.asarray(recs, dtype=np.int64)
        iface = arr[:, 4]  # checked against the declared interfaces while walking the blocks
        ifaces = np.asarray([(lt, off) for lt, _per_second, off, _snap in interfaces], dtype=np.float64).reshape(-1, 2)
        no_ts = arr[:, 5] < 0  # simple packet blocks carry no timestamp
        ticks = (arr[:, 5].astype(np.uint64) << np.uint64(32)) | arr[:, 6].astype(np.uint64)  # unsigned, as stored
        # split the 64-bit tick count so float64 keeps sub-microsecond precision for the fractional part; a unit
        # finer than 2^-64 s (ticks per second beyond uint64) puts every timestamp in the first second
        per_second = [p for _lt, p, _off, _snap in interfaces]
        fits = np.array([p < 2**64 for p in per_second], dtype=bool)[iface]
        per_sec = np.array([p if p < 2**64 else 1 for p in per_second], dtype=np.uint64)[iface]
        secs = np.where(fits, ticks // per_sec, np.uint64(0))
        frac = np.where(fits, (ticks - secs * per_sec) / per_sec.astype(np.float64), 0.0)
        if not fits.all():
            huge = np.array([float(p) for p in per_second], dtype=np.float64)[iface]
            frac = np.where(fits, frac, ticks.astype(np.float64) / huge)
        ts = secs.astype(np.float64) + frac + ifaces[iface, 1]
        ts = np.where(no_ts, 0.0, ts)
        return RecordChunk(
            data=np.frombuffer(buf, dtype=np.uint8),
            frame_offset=arr[:, 1],
            caplen=arr[:, 2],
            origlen=arr[:, 3],
            timestamp=ts,
            linktype=ifaces[iface, 0].astype(np.int32),
            file_offset=arr[:, 0] + base,
        )
