"""How fast can flow rows become a `datasets.Dataset`? Three ways to write the data contract's columns.

    python benchmarks/dataset_build_path.py [--rows 20000]

(a) `mmae_hf.traffic.dataset._arrow_dataset`: numpy -> pyarrow FixedSizeListArray -> Dataset (what build_dataset uses)
(b) `Dataset.from_dict` of the same numpy arrays with the contract's features
(c) `Dataset.from_generator` yielding one dict per row (per-row list encoding), on a quarter of the rows
Each is followed by `save_to_disk`; prints rows/s and writes benchmarks/results/dataset_build_path.json.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_columns(n, rng):
    return {
        "input_bytes": rng.integers(0, 256, (n, 1600), dtype=np.uint8),
        "packet_lengths": rng.integers(40, 1500, (n, 5), dtype=np.int32),
        "packet_iats": rng.random((n, 5), dtype=np.float32),
        "packet_directions": rng.choice(np.array([-1, 1], np.int8), (n, 5)),
        "flow_stats": rng.random((n, 27), dtype=np.float32),
        "label": rng.integers(0, 4, n),
        "source_file": np.array([f"c{i % 50}.pcap" for i in range(n)], dtype=object),
        "group": np.array([f"c{i % 50}.pcap" for i in range(n)], dtype=object),
        "start_time": rng.random(n) * 1e9,
        "end_time": rng.random(n) * 1e9,
        "packet_count": rng.integers(1, 100, n),
        "byte_count": rng.integers(40, 10**6, n),
        "protocol": rng.choice(np.array([6, 17], np.int8), n),
    }


def main():
    from datasets import Dataset, disable_progress_bars

    from mmae_hf.traffic.dataset import _arrow_dataset, contract_features

    disable_progress_bars()
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    cols = make_columns(args.rows, np.random.default_rng(0))
    features = contract_features(["a", "b", "c", "d"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ds = _arrow_dataset(cols, features, "train")
        ds.save_to_disk(f"{tmp}/a")
        results["pyarrow_fixed_size_list"] = (args.rows, time.perf_counter() - t)

        t = time.perf_counter()
        ds = Dataset.from_dict(
            {k: (v.tolist() if v.dtype == object else v) for k, v in cols.items()}, features=features
        )
        ds.save_to_disk(f"{tmp}/b")
        results["from_dict_numpy"] = (args.rows, time.perf_counter() - t)

        n = args.rows // 4
        names = list(cols)

        def rows():
            for i in range(n):
                yield {k: cols[k][i] for k in names}

        t = time.perf_counter()
        ds = Dataset.from_generator(rows, features=features, cache_dir=f"{tmp}/cache")
        ds.save_to_disk(f"{tmp}/c")
        results["from_generator_per_row"] = (n, time.perf_counter() - t)
    out = {k: {"rows": r, "seconds": round(s, 3), "rows_per_s": round(r / s)} for k, (r, s) in results.items()}
    for k, v in out.items():
        print(f"{k:28s} {v['rows']:7d} rows  {v['seconds']:7.2f} s  {v['rows_per_s']:9d} rows/s")
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/dataset_build_path.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
