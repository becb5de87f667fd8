"""Flow-table memory and speed on port-scan captures (every packet a new flow) versus ordinary traffic.

A port scan (or a capture an attacker shapes) opens one flow per packet. Before the open-flow cap, every open
flow cost ~6-10 KB and nothing was ended until the idle timeout (120 s), so a 100k-flow scan took ~1 GB.
This benchmark writes crafted captures into a temp folder (never committed; the 1M-flow one is ~70 MB):

- ``scan-10k`` / ``scan-100k`` / ``scan-1M``: one TCP SYN per flow from one host to distinct (address, port)
  pairs, 10 us apart (so every flow is still open at the end: no idle timeout helps);
- ``normal``: 1M packets of ordinary TCP connections (handshake, data both ways with payloads, FIN), 20 packets
  per connection, 200 connections interleaved at any time;

and reads each one with ``iter_flows`` in a fresh subprocess (one pinned core), recording packets/s, flows and
the peak RSS of the process (``ru_maxrss``) and its growth over the RSS after imports.

``--code DIR`` imports ``mmae_hf`` from another source tree (e.g. ``git archive main`` unpacked) so that the
numbers "before" and "after" a change come from one sitting on the same captures.

Usage: python benchmarks/bench_scan.py [--sizes 10000 100000 1000000] [--code DIR --label before]
       [--engines fast reference] [--output benchmarks/results/scan_memory.json]
"""

import argparse
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_ETH = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00"


def _frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0, 64, 6, 0, src, dst)
    return _ETH + ip + struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 8192, 0, 0) + payload


def _write_pcap(path: Path, records) -> int:
    """records: iterable of (timestamp, frame). Returns the number of packets written."""
    count = 0
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, frame in records:
            sec = int(ts)
            fh.write(struct.pack("<IIII", sec, int(round((ts - sec) * 1e6)), len(frame), len(frame)))
            fh.write(frame)
            count += 1
    return count


def write_scan(path: Path, flows: int) -> int:
    """``flows`` SYNs from 10.0.0.1 to distinct (address in 172.16/12, port) pairs, 10 us apart."""
    src = socket.inet_aton("10.0.0.1")

    def records():
        for i in range(flows):
            host, port = divmod(i, 1000)
            dst = struct.pack("!I", (172 << 24) | (16 << 16) | host)
            yield 1_700_000_000.0 + i * 1e-5, _frame(src, dst, 40000, 1 + port, 0x02, 1000 + i, 0, b"")

    return _write_pcap(path, records())


def write_normal(path: Path, packets: int, per_flow: int = 20, concurrent: int = 200) -> int:
    """Ordinary TCP connections: SYN, SYN-ACK, ACK, data both ways (100-1400 byte payloads), FIN, FIN, ACK."""
    body = bytes(range(256)) * 6

    def connection(i):
        client = struct.pack("!I", (10 << 24) | (i % 60000) + 256)
        server = socket.inet_aton("192.0.2.1")
        cport, c_seq, s_seq = 1024 + i % 60000, 1000, 5000
        out = [
            (client, server, cport, 443, 0x02, c_seq, 0, b""),
            (server, client, 443, cport, 0x12, s_seq, c_seq + 1, b""),
            (client, server, cport, 443, 0x10, c_seq + 1, s_seq + 1, b""),
        ]
        for k in range(per_flow - 6):
            size = 100 + (i * 37 + k * 211) % 1300
            if k % 2 == 0:
                out.append((client, server, cport, 443, 0x18, c_seq + 1, s_seq + 1, body[:size]))
            else:
                out.append((server, client, 443, cport, 0x18, s_seq + 1, c_seq + 1, body[:size]))
        out += [
            (client, server, cport, 443, 0x11, c_seq + 2, s_seq + 2, b""),
            (server, client, 443, cport, 0x11, s_seq + 2, c_seq + 3, b""),
            (client, server, cport, 443, 0x10, c_seq + 3, s_seq + 3, b""),
        ]
        return out

    def records():
        n_conn = packets // per_flow
        # connections start in waves of `concurrent`; their packets interleave within a wave
        t = 1_700_000_000.0
        for wave in range(0, n_conn, concurrent):
            conns = [connection(i) for i in range(wave, min(n_conn, wave + concurrent))]
            for k in range(per_flow):
                for c in conns:
                    t += 1e-5
                    yield t, _frame(*c[k])

    return _write_pcap(path, records())


# ---------------------------------------------------------------- one measurement (run in a subprocess)
def measure(path: str, engine: str) -> dict:
    import resource

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    from mmae_hf.traffic import FlowOptions, PacketAccounting, iter_flows

    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    acc = PacketAccounting()
    flows = 0
    t0 = time.perf_counter()
    for _ in iter_flows(path, FlowOptions(), accounting=acc, engine=engine):
        flows += 1
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import mmae_hf

    return {
        "flows": flows,
        "packets": acc.packets_read,
        "seconds": round(seconds, 3),
        "packets_per_second": round(acc.packets_read / seconds),
        "peak_rss_mb": round(peak, 1),
        "rss_growth_mb": round(peak - rss_after_import, 1),
        "accounting": {k: v for k, v in acc.to_dict().items() if k not in ("errors",)},
        "mmae_hf_from": str(Path(mmae_hf.__file__).parent.parent.name),
    }


def _run_child(path: Path, engine: str, code: str | None, timeout: float, memory_limit_mb: int | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(code or REPO))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(path), "--engines", engine]

    def limit():
        if memory_limit_mb:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_mb << 20, memory_limit_mb << 20))

    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"failed": f"did not finish within {timeout:.0f} s"}
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="scan flows")
    p.add_argument("--normal-packets", type=int, default=1_000_000)
    p.add_argument("--engines", nargs="+", default=["fast"], choices=("fast", "reference"))
    p.add_argument(
        "--reference-max-flows",
        type=int,
        default=100_000,
        help="skip the (slow) reference engine on scans larger than this",
    )
    p.add_argument("--code", help="import mmae_hf from this source tree instead of this checkout")
    p.add_argument("--label", default="after", help="name of this series in the results (e.g. before / after)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--memory-limit-mb", type=int, default=12_000, help="address-space limit per measurement")
    p.add_argument(
        "--workdir",
        help="folder for the generated captures, kept and reused (default: a temp folder, "
        "removed at the end); never inside the repository",
    )
    p.add_argument("--output", default=str(HERE / "results" / "scan_memory.json"))
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.engines[0])))
        return 0

    # --workdir: captures kept there and reused (the same files for a "before" and an "after" series)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_scan_")
    folder = Path(args.workdir) if args.workdir else Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    captures = {}
    t0 = time.perf_counter()
    for n in args.sizes:
        name = f"scan-{n // 1000}k" if n < 1_000_000 else f"scan-{n / 1e6:g}M"
        captures[name] = (folder / f"{name}.pcap", n)
        if not captures[name][0].exists():
            write_scan(captures[name][0], n)
    captures["normal"] = (folder / f"normal-{args.normal_packets}.pcap", None)
    if not captures["normal"][0].exists():
        write_normal(captures["normal"][0], args.normal_packets)
    print(f"captures written in {time.perf_counter() - t0:.1f} s to {folder}", file=sys.stderr)

    rows = []
    for name, (path, flows) in captures.items():
        for engine in args.engines:
            if engine == "reference" and flows and flows > args.reference_max_flows:
                continue
            load = os.getloadavg()
            result = _run_child(path, engine, args.code, args.timeout, args.memory_limit_mb)
            row = {
                "series": args.label,
                "capture": name,
                "capture_mb": round(path.stat().st_size / 2**20, 1),
                "engine": engine,
                "load_before": [round(x, 2) for x in load],
                **result,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)

    out = Path(args.output)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    series = {k: v for k, v in previous.get("series", {}).items() if k != args.label}
    series[args.label] = {
        "rows": rows,
        "code": "this checkout" if not args.code else "--code tree",
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    result = {
        "benchmark": "bench_scan.py",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "one pinned core per measurement; peak_rss_mb = ru_maxrss of the measuring process",
        "series": series,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    if tmp is not None:
        tmp.cleanup()
    return 0


def format_table(result: dict) -> str:
    lines = [
        "| series | capture | engine | packets | flows | packets/s | peak RSS MB | RSS growth MB | evicted by cap |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, series in result["series"].items():
        for r in series["rows"]:
            if "failed" in r:
                lines.append(f"| {label} | {r['capture']} | {r['engine']} | | | | | | {r['failed']} |")
                continue
            evicted = r["accounting"].get("flows_evicted_by_cap", "-")
            lines.append(
                f"| {label} | {r['capture']} | {r['engine']} | {r['packets']} | {r['flows']} | "
                f"{r['packets_per_second']:,} | {r['peak_rss_mb']} | {r['rss_growth_mb']} | {evicted} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
