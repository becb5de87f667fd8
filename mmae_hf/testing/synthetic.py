"""Synthetic flow datasets with the exact data contract, for tests, examples and smoke runs.

`make_synthetic_traffic_dataset` returns a `datasets.DatasetDict` (train / validation / test) whose
columns and features are those of the data contract (docs/INTERFACES.md): one row = one flow, the
1600-byte `input_bytes` (5 packets x (80 header bytes + 240 payload bytes)), per-packet lengths,
inter-arrival times and directions, 27 flow statistics, a `ClassLabel` and the metadata columns.

The bytes are not real traffic. Each class has its own *signature*: a fixed 16-byte key that tiles
the L4 payload, its own payload length range, protocol, packet count and timing scale. Per flow,
about 10% of the payload bytes and the header's sequence numbers are random noise, so that a tiny
model has something to learn but cannot memorise single flows. Everything is drawn from
`numpy.random.default_rng(seed)`: the same arguments give the same dataset, byte for byte.

Splits are made by capture file (`group`), never by row: flow ``i`` of a class belongs to capture
``i % 4``; captures 0-1 are train, 2 validation and 3 test (so 50/25/25 of `flows_per_class`).
"""

import numpy as np

from ..data_contract import BYTE_COLUMN, HEADER_BYTES, NUM_FLOW_STATS, NUM_PACKETS, PAYLOAD_BYTES

PACKET_BYTES = HEADER_BYTES + PAYLOAD_BYTES
NUM_BYTES = NUM_PACKETS * PACKET_BYTES

# capture index (flow_index % 4) -> split
_SPLIT_OF_CAPTURE = ("train", "train", "validation", "test")


def synthetic_features(class_names):
    """The `datasets.Features` of the data contract for the given class names (the dataset builder's own)."""
    from ..traffic.dataset import contract_features

    return contract_features(class_names, num_bytes=NUM_BYTES, num_packets=NUM_PACKETS, num_stats=NUM_FLOW_STATS)


def _class_profile(class_id):
    """Fixed, class-specific generation parameters (independent of the dataset seed)."""
    rng = np.random.default_rng(10_007 + class_id)
    return {
        "key": rng.integers(0, 256, size=16, dtype=np.uint8),
        "protocol": 6 if class_id % 2 == 0 else 17,
        "min_packets": 2 + class_id % 4,
        "payload_len": (40 + 50 * (class_id % 4), 80 + 50 * (class_id % 4)),
        "iat_scale": 10.0 ** (-3 + class_id % 4),
        "directions": np.array([1, -1, 1, -1, 1] if class_id % 3 else [1, 1, -1, 1, -1], dtype=np.int8),
    }


def _make_flow(class_id, flow_index, rng):
    profile = _class_profile(class_id)
    num_packets = min(NUM_PACKETS, profile["min_packets"] + int(rng.integers(0, 2)))
    payload = np.zeros((NUM_PACKETS, PACKET_BYTES), dtype=np.uint8)
    lengths = np.zeros(NUM_PACKETS, dtype=np.int32)
    iats = np.zeros(NUM_PACKETS, dtype=np.float32)
    directions = np.zeros(NUM_PACKETS, dtype=np.int8)
    protocol = profile["protocol"]
    l4_header = 20 if protocol == 6 else 8
    low, high = profile["payload_len"]
    for k in range(num_packets):
        pay_len = int(rng.integers(low, high + 1))
        ip_len = 20 + l4_header + pay_len
        header = payload[k, :HEADER_BYTES]
        header[0] = 0x45
        header[2:4] = np.frombuffer(np.uint16(ip_len).byteswap().tobytes(), dtype=np.uint8)
        header[4:6] = rng.integers(0, 256, size=2, dtype=np.uint8)  # IP id: noise
        header[8] = 64
        header[9] = protocol
        # addresses stay zero (anonymised), L4 header follows the 20-byte IP header
        header[20:24] = np.array([0x01, 0xBB, 0xC0, class_id & 0xFF], dtype=np.uint8)  # ports
        if protocol == 6:
            header[24:32] = rng.integers(0, 256, size=8, dtype=np.uint8)  # seq/ack: noise
            header[32] = 0x50
            header[33] = 0x18
        else:
            header[24:26] = np.frombuffer(np.uint16(8 + pay_len).byteswap().tobytes(), dtype=np.uint8)
        body = np.resize(np.roll(profile["key"], k), pay_len).copy()
        noisy = rng.random(pay_len) < 0.1
        body[noisy] = rng.integers(0, 256, size=int(noisy.sum()), dtype=np.uint8)
        payload[k, HEADER_BYTES : HEADER_BYTES + min(pay_len, PAYLOAD_BYTES)] = body[:PAYLOAD_BYTES]
        lengths[k] = ip_len
        iats[k] = 0.0 if k == 0 else float(rng.exponential(profile["iat_scale"]))
        directions[k] = profile["directions"][k]
    extra_packets = int(rng.integers(0, 20))
    packet_count = num_packets + extra_packets
    byte_count = int(lengths.sum()) + extra_packets * int(lengths[:num_packets].mean())
    duration = float(iats.sum()) + extra_packets * profile["iat_scale"]
    present = lengths[:num_packets].astype(np.float64)
    gaps = iats[1:num_packets].astype(np.float64) if num_packets > 1 else np.zeros(1)
    stats = np.zeros(NUM_FLOW_STATS, dtype=np.float64)
    stats[:20] = [
        packet_count,
        byte_count,
        present.mean(),
        present.std(),
        present.min(),
        present.max(),
        np.median(present),
        np.quantile(present, 0.25),
        np.quantile(present, 0.75),
        duration,
        gaps.mean(),
        gaps.std(),
        gaps.min(),
        gaps.max(),
        np.median(gaps),
        present.mean() - 20 - l4_header,
        present.max() - 20 - l4_header,
        0.0,
        packet_count / max(duration, 1e-6),
        byte_count / max(duration, 1e-6),
    ]
    stats[20:25] = rng.integers(0, 3, size=5)
    stats[25] = float(protocol == 6)
    stats[26] = len(np.unique(present))
    start_time = 1_700_000_000.0 + class_id * 3600.0 + flow_index * 7.5
    capture = flow_index % len(_SPLIT_OF_CAPTURE)
    return _SPLIT_OF_CAPTURE[capture], {
        BYTE_COLUMN: payload.reshape(-1),
        "packet_lengths": lengths,
        "packet_iats": iats,
        "packet_directions": directions,
        "flow_stats": stats.astype(np.float32),
        "label": class_id,
        "capture": capture,
        "start_time": start_time,
        "end_time": start_time + duration,
        "packet_count": packet_count,
        "byte_count": byte_count,
        "protocol": protocol,
    }


def _to_dataset(rows, features, class_names):
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    def fixed(name, dtype, width):
        flat = np.concatenate([r[name] for r in rows]).astype(dtype) if rows else np.zeros(0, dtype)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)

    source_files = [f"{class_names[r['label']]}/capture_{r['capture']}.pcap" for r in rows]
    columns = {
        BYTE_COLUMN: fixed(BYTE_COLUMN, np.uint8, NUM_BYTES),
        "packet_lengths": fixed("packet_lengths", np.int32, NUM_PACKETS),
        "packet_iats": fixed("packet_iats", np.float32, NUM_PACKETS),
        "packet_directions": fixed("packet_directions", np.int8, NUM_PACKETS),
        "flow_stats": fixed("flow_stats", np.float32, NUM_FLOW_STATS),
        "label": pa.array([r["label"] for r in rows], pa.int64()),
        "source_file": pa.array(source_files, pa.string()),
        "group": pa.array(source_files, pa.string()),
        "start_time": pa.array([r["start_time"] for r in rows], pa.float64()),
        "end_time": pa.array([r["end_time"] for r in rows], pa.float64()),
        "packet_count": pa.array([r["packet_count"] for r in rows], pa.int64()),
        "byte_count": pa.array([r["byte_count"] for r in rows], pa.int64()),
        "protocol": pa.array([r["protocol"] for r in rows], pa.int8()),
    }
    table = pa.Table.from_pydict(columns).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


def make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=0, class_names=None):
    """Build a small in-memory `DatasetDict` (train / validation / test) with the data contract's features.

    Args:
        num_classes (`int`, defaults to 3): number of classes (named ``app_0``, ``app_1``, ...).
        flows_per_class (`int`, defaults to 16): flows generated per class, over all splits; flow ``i``
            lands in capture ``i % 4`` (captures 0-1 train, 2 validation, 3 test), so the default gives
            8 / 4 / 4 flows per class.
        seed (`int`, defaults to 0): seed of the per-flow noise (class signatures do not depend on it).
        class_names (`list[str]`, *optional*): names for the `label` ClassLabel.

    Returns:
        `datasets.DatasetDict` with splits ``train``, ``validation`` and ``test``; rows in each split are
        ordered by class, then by flow index.
    """
    from datasets import DatasetDict

    if num_classes < 1 or flows_per_class < 1:
        raise ValueError(f"need num_classes >= 1 and flows_per_class >= 1, got {num_classes} and {flows_per_class}")
    class_names = list(class_names) if class_names is not None else [f"app_{c}" for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
    rng = np.random.default_rng(seed)
    per_split = {name: [] for name in ("train", "validation", "test")}
    for class_id in range(num_classes):
        for flow_index in range(flows_per_class):
            split, row = _make_flow(class_id, flow_index, rng)
            per_split[split].append(row)
    features = synthetic_features(class_names)
    return DatasetDict({name: _to_dataset(rows, features, class_names) for name, rows in per_split.items()})


__all__ = ["make_synthetic_traffic_dataset", "synthetic_features"]
