"""Peak memory and speed of build_dataset on many flows, with the flow columns kept in memory or spilled to disk.

    python benchmarks/dataset_build_scale.py [--files 100 --flows-per-file 1000]

The pcap reader is replaced by a generator of random flows (the reader has its own benchmarks), so this measures
the builder itself: metadata, split, de-duplication, caps and arrow writing. Each setting runs in a fresh process;
prints and writes benchmarks/results/dataset_build_scale.json.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import resource, sys, tempfile, threading, time, json
from pathlib import Path

# peak anonymous memory (heap) and file-backed memory (memory-mapped arrow pages, reclaimable), sampled
peak = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        for line in open("/proc/self/status"):
            key = line.split(":")[0]
            if key in peak:
                peak[key] = max(peak[key], int(line.split()[1]) // 1024)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
import numpy as np
from mmae_hf.traffic import FlowRecord
from mmae_hf.traffic.dataset import build_dataset

files, per_file, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def fake_reader(path, options, accounting=None, strict=False, source_name=None):
    rng = np.random.default_rng(abs(hash(source_name)) % 2**32)
    for i in range(per_file):
        accounting.packets_read += 5; accounting.packets_in_flows += 5; accounting.flows += 1
        yield FlowRecord(rng.integers(0, 256, 1600, dtype=np.uint8), np.full(5, 100, np.int32),
                         np.zeros(5, np.float32), np.ones(5, np.int8), np.zeros(27, np.float32),
                         "a", "b", 1, 2, 6, float(i), float(i) + 1, 5, 500, source_name)

with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "in"
    for f in range(files):
        (root / f"class{f % 5}").mkdir(parents=True, exist_ok=True)
        (root / f"class{f % 5}" / f"c{f:04d}.pcap").write_bytes(b"")
    t = time.perf_counter()
    res = build_dataset(root, Path(tmp) / "out", flow_reader=fake_reader, max_memory_mb=budget, progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"flows": res.report["flows"]["final"], "seconds": round(seconds, 2),
                      "timing": res.report["timing_seconds"], "spilled_captures": res.report["captures_spilled_to_disk"],
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "peak_anon_mb": peak["RssAnon"], "peak_file_backed_mb": peak["RssFile"]}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--flows-per-file", type=int, default=1000)
    args = parser.parse_args()
    base = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, mmae_hf.traffic.dataset, datasets; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = {
        "rss_after_imports_mb": int(base.stdout.split()[-1]),
        "files": args.files,
        "flows_per_file": args.flows_per_file,
        "payload_mb": round(args.files * args.flows_per_file * 1600 / 2**20),
    }
    for budget in (2048, 16):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.files), str(args.flows_per_file), str(budget)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[f"max_memory_mb={budget}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(budget, out[f"max_memory_mb={budget}"])
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/dataset_build_scale.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
