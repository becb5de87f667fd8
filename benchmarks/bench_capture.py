"""Build a large benchmark capture by concatenating the development flow pcaps (never committed).

Each repetition shifts the flows into a fresh address range (first IPv4 octet / last IPv6 byte of both addresses)
and every file is re-timed to start right after the previous one, so timestamps grow monotonically and every
repetition gives new flows.
"""

import os
import struct
from pathlib import Path


from mmae_hf.traffic.pcapio import CaptureReader


def shared_data_dir() -> Path:
    env = os.environ.get("MMAE_SHARED_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared"
    return root / "data"


def _load_records(files):
    """[(frames, relative timestamps)] per file; only Ethernet captures (the whole development set)."""
    out = []
    for f in files:
        frames, times = [], []
        for chunk in CaptureReader(f, strict=True):
            if (chunk.linktype != 1).any():
                break
            for i in range(len(chunk)):
                s = int(chunk.frame_offset[i])
                frames.append(chunk.data[s : s + int(chunk.caplen[i])].tobytes())
                times.append(float(chunk.timestamp[i]))
        if frames:
            t0 = times[0]
            out.append((frames, [max(t - t0, 0.0) for t in times]))
    return out


def _shift_addresses(frame: bytes, rep: int) -> bytes:
    if rep == 0 or len(frame) < 34:
        return frame
    b = bytearray(frame)
    pos, etype = 14, b[12:14]
    while etype in (b"\x81\x00", b"\x88\xa8") and len(b) >= pos + 4:
        etype = b[pos + 2 : pos + 4]
        pos += 4
    if etype == b"\x08\x00" and len(b) >= pos + 20:
        b[pos + 12] = (b[pos + 12] + rep) & 0xFF
        b[pos + 16] = (b[pos + 16] + rep) & 0xFF
    elif etype == b"\x86\xdd" and len(b) >= pos + 40:
        b[pos + 23] = (b[pos + 23] + rep) & 0xFF
        b[pos + 39] = (b[pos + 39] + rep) & 0xFF
    return bytes(b)


def build_capture(path: Path, min_packets: int, files=None, start_time: float = 1.7e9) -> int:
    """Write a classic Ethernet pcap with at least ``min_packets`` packets; returns the packet count."""
    if files is None:
        files = sorted((shared_data_dir() / "ndpi-encrypted-services").rglob("*.pcap"))
    records = _load_records(files)
    t = start_time
    n = 0
    rep = 0
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        while n < min_packets:
            for frames, times in records:
                for frame, dt in zip(frames, times):
                    ts = t + dt
                    sec = int(ts)
                    usec = int(round((ts - sec) * 1e6))
                    if usec >= 1000000:
                        sec, usec = sec + 1, usec - 1000000
                    fr = _shift_addresses(frame, rep)
                    fh.write(struct.pack("<IIII", sec, usec, len(fr), len(fr)))
                    fh.write(fr)
                    n += 1
                t += max(times) + 0.001
            rep += 1
    return n


if __name__ == "__main__":
    import sys

    print(build_capture(Path(sys.argv[1]), int(sys.argv[2])))
