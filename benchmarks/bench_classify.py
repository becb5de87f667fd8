"""End-to-end classification throughput: pcap -> flows -> MMAE -> per-flow predictions.

Builds one capture by merging every pcap of the nDPI development set (``../shared/data/ndpi-encrypted-services``,
packets sorted by time, like ``mergecap``) into a temporary file, then classifies it with the
``traffic-classification`` pipeline's streaming path (what ``mmae-classify`` runs) for random-initialised
mmae-base and mmae-tiny models (weights do not change the cost). Reports flows/s and how the time splits into
parsing (pcap reading, flow assembly, anonymisation, encoding) and the model.

    python benchmarks/bench_classify.py [--batch-size 256] [--models mmae-base mmae-tiny] [--repeat 1]

Writes ``benchmarks/results/classify.json``. The merged capture is deleted afterwards (never committed).
"""

import argparse
import json
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("MMAE_SHARED_DIR", REPO / ".." / "shared"))
DATA = SHARED / "data" / "ndpi-encrypted-services"
RESULTS = REPO / "benchmarks" / "results" / "classify.json"

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # little endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}


def read_classic_pcap(path: Path):
    """(linktype, [(timestamp_ns, original_length, frame bytes)]) of a classic pcap file."""
    data = path.read_bytes()
    if data[:4] not in _MAGIC:
        raise ValueError(f"{path}: not a classic pcap file")
    order, ns_per_unit = _MAGIC[data[:4]]
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    packets, offset = [], 24
    while offset + 16 <= len(data):
        seconds, fraction, caplen, origlen = struct.unpack(order + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        if len(frame) < caplen:
            break
        packets.append((seconds * 1_000_000_000 + fraction * ns_per_unit, origlen, frame))
        offset += 16 + caplen
    return linktype, packets


def merge_captures(files, target: Path, repeat: int = 1) -> dict:
    """Merge the captures into one nanosecond pcap sorted by time; ``repeat`` copies are shifted by a day each."""
    merged, linktypes = [], set()
    for path in files:
        linktype, packets = read_classic_pcap(path)
        linktypes.add(linktype)
        merged.extend(packets)
    if len(linktypes) != 1:
        raise ValueError(f"captures mix link types {sorted(linktypes)}")
    day = 86_400 * 1_000_000_000
    merged = [(t + copy * day, n, f) for copy in range(repeat) for t, n, f in merged]
    merged.sort(key=lambda packet: packet[0])
    with open(target, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktypes.pop()))
        for timestamp, origlen, frame in merged:
            out.write(struct.pack("<IIII", timestamp // 1_000_000_000, timestamp % 1_000_000_000, len(frame), origlen))
            out.write(frame)
    return {"files": len(files), "copies": repeat, "packets": len(merged), "bytes": target.stat().st_size}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_model(
    preset: str, capture: Path, batch_size: int, num_labels: int, folder: Path, max_flows: int | None = None
) -> dict:
    import torch

    from mmae_hf import MMAEConfig, MMAEForSequenceClassification
    from mmae_hf.pipeline_traffic import TrafficClassificationPipeline

    torch.manual_seed(0)
    model = MMAEForSequenceClassification(MMAEConfig.from_preset(preset, num_labels=num_labels)).eval()
    model.save_pretrained(folder)
    try:
        from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor
        from mmae_hf.traffic import FlowOptions

        MMAEFeatureExtractor(flow_options=FlowOptions().to_dict()).save_pretrained(folder)
    except ImportError:
        pass
    classify = TrafficClassificationPipeline(
        model=MMAEForSequenceClassification.from_pretrained(folder, dtype=torch.float32),
        device=-1,
        task="traffic-classification",
        batch_size=batch_size,
    )
    # warm-up: one small batch (first-call allocations, lazy imports)
    import numpy as np

    classify({"input_bytes": np.zeros((8, 1600), np.uint8)})
    timings: dict = {}
    load_before = load_average()
    cpu_start = time.process_time()  # CPU seconds of this process (all threads): less sensitive to other jobs
    start = time.perf_counter()
    flows = 0
    for records in classify.predict_stream([str(capture)], batch_size=batch_size, timings=timings):
        flows += len(records)
        if max_flows is not None and flows >= max_flows:
            break  # the rate is measured on the flows classified so far (parsing counted for those only)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    parse = timings["parse_s"]
    return {
        "preset": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "flows": flows,
        "max_flows": max_flows,
        "wall_s": round(wall, 3),
        "flows_per_s": round(flows / wall, 1),
        "process_cpu_s": round(cpu, 3),
        "flows_per_cpu_s": round(flows / cpu, 1),
        "parse_s": round(parse, 3),
        "model_s": round(timings["model_s"], 3),
        "postprocess_s": round(timings["postprocess_s"], 3),
        "parse_share": round(parse / wall, 4),
        "model_share": round(timings["model_s"] / wall, 4),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def bench_parsing(capture: Path, batch_size: int) -> dict:
    """Reading + flow assembly + anonymisation + encoding of the whole capture, without a model."""
    from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor
    from mmae_hf.traffic import FlowOptions, PacketAccounting, iter_flows

    extractor = MMAEFeatureExtractor(flow_options=FlowOptions().to_dict())
    accounting = PacketAccounting()
    start = time.perf_counter()
    flows, batch = 0, []
    for record in iter_flows(str(capture), extractor.get_flow_options(), accounting=accounting):
        batch.append(record)
        if len(batch) == batch_size:
            extractor(batch, return_tensors="pt")
            flows += len(batch)
            batch = []
    if batch:
        extractor(batch, return_tensors="pt")
        flows += len(batch)
    seconds = time.perf_counter() - start
    return {
        "flows": flows,
        "packets": accounting.packets_read,
        "seconds": round(seconds, 3),
        "flows_per_s": round(flows / seconds, 1),
        "packets_per_s": round(accounting.packets_read / seconds, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=["mmae-base", "mmae-tiny"])
    parser.add_argument("--repeat", type=int, default=1, help="merge this many time-shifted copies of the set")
    parser.add_argument(
        "--base-max-flows",
        type=int,
        default=512,
        help="stop mmae-base after this many flows (about 5.5 GFLOP per flow on CPU; 0 = all)",
    )
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch
    import transformers

    files = sorted(DATA.rglob("*.pcap"))
    if not files:
        raise SystemExit(f"no captures under {DATA} (set MMAE_SHARED_DIR)")
    results = {
        "what": "end-to-end flows/s, pcap -> per-flow predictions (TrafficClassificationPipeline.predict_stream)",
        "command": "python benchmarks/bench_classify.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "note": "shared machine: other jobs ran at the same time; see the load averages",
        },
        "batch_size": args.batch_size,
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_classify_") as tmp:
        capture = Path(tmp) / "merged.pcap"
        start = time.perf_counter()
        results["capture"] = merge_captures(files, capture, repeat=args.repeat)
        results["capture"]["source"] = "ndpi-encrypted-services (all pcaps, merged by time)"
        results["capture"]["merge_s"] = round(time.perf_counter() - start, 2)
        print(f"merged capture: {results['capture']}", flush=True)
        results["parsing_only"] = bench_parsing(capture, args.batch_size)
        print(f"parsing only: {results['parsing_only']}", flush=True)
        for preset in args.models:
            limit = args.base_max_flows if preset == "mmae-base" and args.base_max_flows > 0 else None
            entry = bench_model(preset, capture, args.batch_size, 9, Path(tmp) / preset, max_flows=limit)
            # parse share projected to the whole capture: parse cost per flow from the parsing-only run
            parse_per_flow = results["parsing_only"]["seconds"] / max(results["parsing_only"]["flows"], 1)
            model_per_flow = entry["model_s"] / max(entry["flows"], 1)
            entry["projected_parse_share_whole_capture"] = round(parse_per_flow / (parse_per_flow + model_per_flow), 4)
            results["models"].append(entry)
            print(json.dumps(entry), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
