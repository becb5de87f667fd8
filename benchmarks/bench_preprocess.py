"""Preprocessing throughput and memory: mmae_hf.traffic versus a straightforward scapy extraction.

Builds a benchmark capture (>= 200k packets) by concatenating the development flow pcaps (re-timed, shifted into
new address ranges per repetition; written to a temp dir, never committed), then measures on one pinned core:

- ours: ``iter_flows`` (default options, ``default`` anonymisation), packets per second over the whole capture;
- scapy: the way YaTC / NetMamba / ET-BERT preprocess, full scapy dissection of every packet (``Ether(frame)``)
  and the fields read from its layers, feeding the same flow rules (``ReferenceAssembler``); timed on a subset;
- that both produce identical arrays on that subset (payload bytes equal, statistics equal to float tolerance);
- peak memory (max RSS and tracemalloc peak) of ours at 1x and 10x the capture size.

Usage: python benchmarks/bench_preprocess.py [--packets 200000] [--scapy-packets 20000] [--scale 10]
Writes benchmarks/results/preprocess.json and prints a table.
"""

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_capture import build_capture  # noqa: E402

from mmae_hf.traffic import FLOW_STAT_NAMES, FlowOptions, PacketAccounting, iter_flows  # noqa: E402


def pin_one_core() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})


# ---------------------------------------------------------------- ours
def run_ours(path: str, trace: bool) -> dict:
    pin_one_core()
    if trace:
        import tracemalloc

        tracemalloc.start()
    rss_before = current_rss_mb()
    acc = PacketAccounting()
    flows = 0
    t0 = time.perf_counter()
    for _record in iter_flows(path, FlowOptions(), accounting=acc, engine="fast"):
        flows += 1
    dt = time.perf_counter() - t0
    out = {
        "packets": acc.packets_read,
        "flows": flows,
        "seconds": dt,
        "packets_per_second": acc.packets_read / dt,
        "rss_after_imports_mb": rss_before,  # numpy + the mmae_hf package (its __init__ imports transformers/torch)
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "skipped": acc.skipped,
    }
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    return out


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def subprocess_json(args: list) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- scapy reference
def scapy_flows(path: str, limit: int, options: FlowOptions):
    """Flows of the first ``limit`` packets with full scapy dissection per packet (one pinned core)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader

    from mmae_hf.traffic.anonymize import build_slot
    from mmae_hf.traffic.flows import ReferenceAssembler

    acc = PacketAccounting()
    asm = ReferenceAssembler(options, acc, path)
    out = []
    t0 = time.perf_counter()
    for n, (frame, meta) in enumerate(RawPcapReader(path)):
        if n >= limit:
            break
        acc.packets_read += 1
        ts = meta.sec + meta.usec * 1e-6
        pkt = Ether(frame)  # full dissection, as YaTC / NetMamba / ET-BERT do
        if IP in pkt:
            ip = pkt[IP]
            if ip.frag:
                acc.skip("ip_fragment")
                continue
            ipv, src, dst = (
                4,
                socket.inet_pton(socket.AF_INET, ip.src) + bytes(12),
                socket.inet_pton(socket.AF_INET, ip.dst) + bytes(12),
            )
            ip_len = ip.len
            l4_off = ip.ihl * 4
        elif IPv6 in pkt:
            ip = pkt[IPv6]
            ipv, src, dst = 6, socket.inet_pton(socket.AF_INET6, ip.src), socket.inet_pton(socket.AF_INET6, ip.dst)
            ip_len = 40 + ip.plen
            l4_off = None
        else:
            acc.skip("non_ip")
            continue
        if TCP in ip:
            l4 = ip[TCP]
            proto, hdr, flags, seq, ack = 6, l4.dataofs * 4, int(l4.flags), l4.seq, l4.ack
        elif UDP in ip:
            l4 = ip[UDP]
            proto, hdr, flags, seq, ack = 17, 8, 0, 0, 0
        else:
            acc.skip("unsupported_transport")
            continue
        ip_bytes = bytes(ip)  # the IP layer re-serialised (with any link-layer padding after it)
        if l4_off is None:
            l4_off = len(ip_bytes) - len(bytes(l4))
        pay_off = l4_off + hdr
        paylen = max(ip_len - pay_off, 0)

        def slot(direction, seq_base, _b=ip_bytes, _v=ipv, _l4=l4_off, _p=pay_off, _e=ip_len, _pr=proto, _f=flags):
            return build_slot(_b, _v, _l4, _p, _e, _pr, _f, direction, options.anonymize, options.header_bytes,
                              options.payload_bytes, seq_base)  # fmt: skip

        asm.add_packet(None, None, ts, ipv, proto, src, l4.sport, dst, l4.dport, flags, ip_len, paylen, seq, ack,
                       slot_fn=slot)  # fmt: skip
    asm.finish()
    out = list(asm.drain())
    return out, acc, time.perf_counter() - t0


def pinned_scapy(path: str, limit: int, options: FlowOptions):
    """The scapy reference timed on one pinned core (in this process, pinned, so its flows can be compared)."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin_one_core()
    try:
        return scapy_flows(path, limit, options)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def write_prefix(path: str, dest: str, limit: int) -> None:
    """The first ``limit`` records of a classic pcap as their own file."""
    import struct

    with open(path, "rb") as src, open(dest, "wb") as dst:
        dst.write(src.read(24))
        for _ in range(limit):
            head = src.read(16)
            if len(head) < 16:
                break
            incl = struct.unpack("<I", head[8:12])[0]
            dst.write(head + src.read(incl))


def compare(a, b) -> dict:
    key = lambda f: (f.start_time, f.src_ip, f.src_port, f.dst_ip, f.dst_port)  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    same_payload = len(a) == len(b) and all(np.array_equal(x.input_bytes, y.input_bytes) for x, y in zip(a, b))
    same_side = len(a) == len(b) and all(
        np.array_equal(x.packet_lengths, y.packet_lengths)
        and np.array_equal(x.packet_directions, y.packet_directions)
        and np.allclose(x.packet_iats, y.packet_iats, atol=2e-6)
        and np.allclose(x.flow_stats, y.flow_stats, rtol=1e-4, atol=1e-5)
        for x, y in zip(a, b)
    )
    return {
        "flows": [len(a), len(b)],
        "identical_payload": bool(same_payload),
        "identical_side_channels": bool(same_side),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--scapy-packets", type=int, default=20_000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "preprocess.json"))
    ap.add_argument("--_ours", help=argparse.SUPPRESS)
    ap.add_argument("--_trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._ours:  # child process: one measurement, JSON on stdout
        print(json.dumps(run_ours(args._ours, args._trace)))
        return

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mmae_bench_") as tmp:
        one = os.path.join(tmp, "capture_1x.pcap")
        big = os.path.join(tmp, f"capture_{args.scale}x.pcap")
        sub = os.path.join(tmp, "subset.pcap")
        n1 = build_capture(Path(one), args.packets)
        print(f"built {one}: {n1} packets, {os.path.getsize(one) / 2**20:.1f} MiB", file=sys.stderr)
        nbig = build_capture(Path(big), n1 * args.scale)
        print(f"built {big}: {nbig} packets, {os.path.getsize(big) / 2**20:.1f} MiB", file=sys.stderr)

        # the machine is shared: ours runs before and after the scapy reference, the median is reported
        runs_1x = [subprocess_json(["--_ours", one])]
        ours_big = subprocess_json(["--_ours", big])
        trace_1x = subprocess_json(["--_ours", one, "--_trace"])
        trace_big = subprocess_json(["--_ours", big, "--_trace"])

        # scapy on a subset, and the same subset through our pipeline: identical arrays?
        write_prefix(one, sub, args.scapy_packets)
        opts = FlowOptions()
        runs_1x.append(subprocess_json(["--_ours", one]))
        s_flows, s_acc, s_dt = pinned_scapy(sub, args.scapy_packets, opts)
        runs_1x.append(subprocess_json(["--_ours", one]))
        ours_1x = sorted(runs_1x, key=lambda r: r["packets_per_second"])[1]
        ours_1x["runs_packets_per_second"] = [r["packets_per_second"] for r in runs_1x]
        o_acc = PacketAccounting()
        o_flows = list(iter_flows(sub, opts, accounting=o_acc, engine="fast"))
        check = compare(s_flows, o_flows)
        check["accounting_equal"] = (
            s_acc.to_dict()["skipped"] == o_acc.to_dict()["skipped"] and s_acc.packets_read == o_acc.packets_read
        )
    load_after = os.getloadavg()

    scapy_pps = s_acc.packets_read / s_dt
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "pinned_cores": 1,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },  # fmt: skip
        "capture": {
            "source": "ndpi-encrypted-services flow pcaps, concatenated, re-timed, address-shifted",
            "packets_1x": n1,
            f"packets_{args.scale}x": nbig,
        },  # fmt: skip
        "ours_1x": ours_1x,
        f"ours_{args.scale}x": ours_big,
        "scapy_reference": {"packets": s_acc.packets_read, "seconds": s_dt, "packets_per_second": scapy_pps},
        "speedup_vs_scapy": ours_1x["packets_per_second"] / scapy_pps,
        "memory": {
            "max_rss_mb_1x": ours_1x["max_rss_mb"],
            f"max_rss_mb_{args.scale}x": ours_big["max_rss_mb"],
            "rss_after_imports_mb_1x": ours_1x["rss_after_imports_mb"],
            f"rss_after_imports_mb_{args.scale}x": ours_big["rss_after_imports_mb"],
            "tracemalloc_peak_mb_1x": trace_1x["tracemalloc_peak_mb"],
            f"tracemalloc_peak_mb_{args.scale}x": trace_big["tracemalloc_peak_mb"],
        },  # fmt: skip
        "same_output_as_scapy_on_subset": check,
        "flow_stat_names": list(FLOW_STAT_NAMES),
        "command": "python benchmarks/bench_preprocess.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("ours, 1x", ours_1x["packets"], ours_1x["packets_per_second"], ours_1x["max_rss_mb"], trace_1x["tracemalloc_peak_mb"]),
        (f"ours, {args.scale}x", ours_big["packets"], ours_big["packets_per_second"], ours_big["max_rss_mb"],
         trace_big["tracemalloc_peak_mb"]),
        ("scapy reference", s_acc.packets_read, scapy_pps, float("nan"), float("nan")),
    ]  # fmt: skip
    print(f"{'pipeline':<18}{'packets':>10}{'packets/s':>14}{'max RSS MB':>12}{'tracemalloc MB':>16}")
    for name, n, pps, rss, tm in rows:
        print(f"{name:<18}{n:>10}{pps:>14,.0f}{rss:>12.1f}{tm:>16.1f}")
    print(f"(RSS after imports, before reading: {ours_1x['rss_after_imports_mb']:.1f} MB)")
    print(f"speed-up vs scapy: {result['speedup_vs_scapy']:.0f}x; identical output on the subset: {check}")
    print(f"load average before/after: {load_before} / {load_after}")


if __name__ == "__main__":
    main()
