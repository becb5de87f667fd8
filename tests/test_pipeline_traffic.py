"""The traffic-classification pipeline: pcap in, one prediction per flow out."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

import mmae_hf  # noqa: F401  (registers the traffic-classification task)
from mmae_hf import MMAEConfig, MMAEForSequenceClassification
from mmae_hf.evaluation import calibrate_ood_threshold as threshold_from_logits
from mmae_hf.pipeline_traffic import TrafficClassificationPipeline, calibrate_ood_threshold, predict_logits
from mmae_hf.traffic import FlowOptions, PcapFormatError, iter_flows

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRAFFIC = REPO / "examples" / "sample_traffic"
# real single-flow captures: the first records of one flow of each sample-traffic class (+ one IPv6 flow)
SINGLE_FLOW_CAPTURES = REPO / "tests" / "data" / "netmamba_golden" / "flows"
LABELS = ["Chat", "VPN", "Web"]
T0 = 1_700_000_000.0


def tiny_config(**overrides):
    values = dict(
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
    )
    values.update(overrides)
    return MMAEConfig.from_preset("mmae-tiny", **values)


def save_model(folder, model, flow_options=None):
    """Saves the model and, beside it, the feature extractor with the flow options of its training data."""
    model.save_pretrained(folder)
    from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor

    options = (flow_options or FlowOptions()).to_dict()
    MMAEFeatureExtractor(flow_options=options).save_pretrained(folder)
    return Path(folder)


def write_capture(path, flows=(), arp=0, start=T0):
    """A pcap with the given flows (``(proto, src, sport, dst, dport, packets)``, alternating directions, 10 ms
    apart, flows started 1 s apart) plus ``arp`` ARP packets."""
    from scapy.all import ARP, IP, TCP, UDP, Ether, Raw, wrpcap

    packets = []
    for index, (proto, src, sport, dst, dport, count) in enumerate(flows):
        for k in range(count):
            forward = k % 2 == 0
            ip = IP(src=src, dst=dst) if forward else IP(src=dst, dst=src)
            ports = (sport, dport) if forward else (dport, sport)
            if proto == "tcp":
                l4 = TCP(sport=ports[0], dport=ports[1], flags="S" if k == 0 else "PA", seq=1000 + 100 * k)
            else:
                l4 = UDP(sport=ports[0], dport=ports[1])
            body = bytes((index * 31 + k * 7 + i) % 256 for i in range(60 + 20 * k))
            # explicit MACs: scapy would otherwise try to resolve the destination MAC (ARP, seconds of timeouts)
            packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4 / (Raw(body) if k else Raw(b""))
            packet.time = start + index + 0.01 * k
            packets.append(packet)
    for k in range(arp):
        packet = Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst=f"10.0.0.{k + 2}")
        packet.time = start + 0.5 + 0.001 * k
        packets.append(packet)
    packets.sort(key=lambda p: float(p.time))
    wrpcap(str(path), packets)
    return Path(path)


CRAFTED_FLOWS = [
    ("tcp", "10.0.0.1", 40001, "192.0.2.10", 443, 4),
    ("udp", "10.0.0.2", 5353, "192.0.2.20", 53, 2),
    ("tcp", "10.0.0.3", 40003, "198.51.100.7", 8443, 6),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = MMAEForSequenceClassification(tiny_config()).eval()
    return save_model(tmp_path_factory.mktemp("tiny-classifier"), model)


@pytest.fixture(scope="module")
def classifier(model_dir):
    return pipeline("traffic-classification", model=str(model_dir), batch_size=4)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return write_capture(tmp_path_factory.mktemp("crafted") / "mixed.pcap", CRAFTED_FLOWS, arp=3)


@pytest.fixture(scope="module")
def real_captures():
    """Three real captures of the committed sample traffic (about ten flows each; the second one is IPv6)."""
    files = [
        SAMPLE_TRAFFIC / "tls-chat" / "tls-chat-00.pcap",
        SAMPLE_TRAFFIC / "udp-stream" / "udp-stream-03.pcap",
        SAMPLE_TRAFFIC / "dtls-messaging" / "dtls-messaging-01.pcap",
    ]
    assert all(path.is_file() for path in files)
    return files


def test_registered_and_feature_extractor_loaded(classifier):
    assert isinstance(classifier, TrafficClassificationPipeline)
    assert classifier.feature_extractor is not None  # preprocessor_config.json beside the weights
    assert classifier.flow_batch_size == 4


def test_crafted_capture_one_record_per_flow(classifier, crafted):
    records = classifier(str(crafted), top_k=2)
    assert len(records) == len(CRAFTED_FLOWS)
    by_tuple = {(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["protocol"]): r for r in records}
    for index, (proto, src, sport, dst, dport, count) in enumerate(CRAFTED_FLOWS):
        record = by_tuple[(src, sport, dst, dport, 6 if proto == "tcp" else 17)]
        assert record["packet_count"] == count
        assert record["start_time"] == pytest.approx(T0 + index)
        assert record["end_time"] == pytest.approx(T0 + index + 0.01 * (count - 1))
        assert record["source_file"].endswith("mixed.pcap")
        assert [entry["label"] for entry in record["top_k"]][0] == record["label"]
        assert len(record["top_k"]) == 2
        assert record["top_k"][0]["score"] >= record["top_k"][1]["score"]
        assert sum(e["score"] for e in record["top_k"]) <= 1.0 + 1e-6
        assert record["label"] in LABELS
        assert record["ood"] is None  # no calibrated threshold in this model's config
    accounting = classifier.last_accounting
    assert accounting.skipped.get("non_ip") == 3
    assert accounting.packets_read == sum(f[-1] for f in CRAFTED_FLOWS) + 3


def test_top_k_is_capped_and_probabilities_are_the_models(classifier, crafted, model_dir):
    records = classifier(str(crafted), top_k=10)
    assert all(len(r["top_k"]) == len(LABELS) for r in records)
    assert all(sum(e["score"] for e in r["top_k"]) == pytest.approx(1.0, abs=1e-5) for r in records)


def test_predictions_match_the_model_on_dataset_rows(classifier, real_captures, model_dir, tmp_path):
    """Pipeline output == the model run on the rows the dataset builder makes from the same captures."""
    from mmae_hf.traffic.dataset import build_dataset

    root = tmp_path / "tree"
    for path in real_captures:
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    built = build_dataset(root, None, dedup=False, progress=False, split_by="flow", seed=0)
    model = MMAEForSequenceClassification.from_pretrained(model_dir).eval()
    expected = {}
    for split in built.dataset.values():
        probs = torch.from_numpy(predict_logits(model, split)).softmax(-1).numpy()
        for row, p in zip(split.select_columns(["source_file", "start_time"]), probs):
            expected[(Path(row["source_file"]).name, round(row["start_time"], 6))] = p
    records = [r for flows in classifier([str(p) for p in real_captures], top_k=3) for r in flows]
    assert len(records) == len(expected) > 0
    for record in records:
        p = expected[(Path(record["source_file"]).name, round(record["start_time"], 6))]
        assert record["label"] == LABELS[int(p.argmax())]
        assert record["score"] == pytest.approx(float(p.max()), abs=1e-5)


def test_path_bytes_and_list_inputs_agree(classifier, real_captures):
    path = real_captures[0]
    from_path = classifier(str(path))
    from_bytes = classifier(path.read_bytes(), source_name="named.pcap")
    assert [r["score"] for r in from_path] == pytest.approx([r["score"] for r in from_bytes], abs=1e-6)
    assert from_bytes[0]["source_file"] == "named.pcap"
    as_list = classifier([str(p) for p in real_captures[:3]])
    assert len(as_list) == 3
    assert [r["label"] for r in as_list[0]] == [r["label"] for r in from_path]


def test_pcapng_gives_the_same_flows(classifier, crafted, tmp_path):
    from scapy.all import rdpcap, wrpcapng

    pcapng = tmp_path / "mixed.pcapng"
    wrpcapng(str(pcapng), rdpcap(str(crafted)))
    from_pcap = classifier(str(crafted))
    from_pcapng = classifier(str(pcapng))
    assert [(r["src_port"], r["packet_count"], r["label"]) for r in from_pcapng] == [
        (r["src_port"], r["packet_count"], r["label"]) for r in from_pcap
    ]
    assert [r["score"] for r in from_pcapng] == pytest.approx([r["score"] for r in from_pcap], abs=1e-6)


def test_flow_batch_size_does_not_change_predictions(classifier, real_captures, tmp_path):
    merged = tmp_path / "merged.pcap"
    write_capture(merged, CRAFTED_FLOWS * 1, arp=0)
    one = classifier(str(merged), batch_size=1)
    many = classifier(str(merged), batch_size=64)
    assert len(one) == len(many) == 3
    assert [r["score"] for r in one] == pytest.approx([r["score"] for r in many], abs=1e-5)


def test_arp_only_capture_gives_no_flows(classifier, tmp_path):
    capture = write_capture(tmp_path / "arp.pcap", flows=(), arp=5)
    assert classifier(str(capture)) == []
    assert classifier.last_accounting.skipped == {"non_ip": 5}


def test_damaged_capture_keeps_the_good_flows(classifier, tmp_path, caplog):
    intact = write_capture(tmp_path / "intact.pcap", CRAFTED_FLOWS)
    data = intact.read_bytes()
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(data[:-30])  # the last packet record is cut short
    good = classifier(str(intact))
    kept = classifier(str(damaged))
    assert 1 <= len(kept) <= len(good)
    assert classifier.last_accounting.errors and "damaged.pcap" in classifier.last_accounting.errors[0]
    first_flows = {(r["src_port"], r["packet_count"]) for r in good}
    assert any((r["src_port"], r["packet_count"]) in first_flows for r in kept)
    with pytest.raises(PcapFormatError, match="damaged.pcap"):
        classifier(str(damaged), errors="raise")


def test_bad_inputs_have_clear_errors(classifier, tmp_path):
    with pytest.raises(ValueError, match="pcap"):
        classifier(b"this is not a capture at all")
    with pytest.raises(FileNotFoundError, match="missing.pcap"):
        classifier(str(tmp_path / "missing.pcap"))
    with pytest.raises(ValueError, match="1600"):
        classifier({"input_bytes": np.zeros((2, 100), np.uint8)})


def test_pre_extracted_flows(classifier, model_dir, crafted):
    model = MMAEForSequenceClassification.from_pretrained(model_dir).eval()
    flows = list(iter_flows(str(crafted), FlowOptions()))
    payload = np.stack([f.input_bytes for f in flows])
    records = classifier({"input_bytes": payload, "src_port": np.array([f.src_port for f in flows])})
    with torch.no_grad():
        probs = model(input_bytes=torch.from_numpy(payload)).logits.softmax(-1)
    assert [r["score"] for r in records] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-6)
    assert [r["src_port"] for r in records] == [f.src_port for f in flows]
    assert len(classifier(payload[0])) == 1


# ------------------------------------------------------------------ out-of-distribution flag


@pytest.fixture(scope="module")
def trained_model():
    """A tiny classifier trained a few steps on synthetic flows, with random-byte flows pushed towards the
    uniform distribution (outlier exposure), so that max-softmax separates them."""
    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

    torch.manual_seed(0)
    data = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=16, seed=0, class_names=LABELS)
    model = MMAEForSequenceClassification(tiny_config(hidden_size=16, intermediate_size=32))
    train = data["train"].with_format("numpy")
    inputs = torch.from_numpy(np.asarray(train["input_bytes"]).astype(np.uint8))
    labels = torch.from_numpy(np.asarray(train["label"]))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        index = torch.randint(0, len(inputs), (8,), generator=generator)
        noise = torch.randint(0, 256, (8, 1600), generator=generator, dtype=torch.uint8)
        logits = model(input_bytes=torch.cat([inputs[index], noise])).logits
        loss = torch.nn.functional.cross_entropy(logits[:8], labels[index]) - logits[8:].log_softmax(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), data


def test_calibrate_ood_threshold_and_flag_random_bytes(trained_model):
    model, data = trained_model
    threshold = calibrate_ood_threshold(model, data["validation"], percentile=5.0)
    assert model.config.ood_threshold == threshold
    logits = predict_logits(model, data["validation"])
    assert threshold == pytest.approx(threshold_from_logits(logits, data["validation"]["label"], 5.0))

    classify = TrafficClassificationPipeline(model=model, device=-1, task="traffic-classification")
    noise = np.random.default_rng(1).integers(0, 256, size=(40, 1600), dtype=np.uint8)
    flagged = classify({"input_bytes": noise})
    assert all(r["ood"] == (r["score"] < threshold) for r in flagged)
    assert np.mean([r["ood"] for r in flagged]) >= 0.9
    test = data["test"].with_format("numpy")
    in_distribution = classify({"input_bytes": np.asarray(test["input_bytes"]).astype(np.uint8)})
    assert np.mean([r["ood"] for r in in_distribution]) <= 0.5
    # the call-time override wins over the config
    assert not any(r["ood"] for r in classify({"input_bytes": noise}, ood_threshold=0.0))
    assert all(r["ood"] for r in classify({"input_bytes": noise}, ood_threshold=1.0))


# ------------------------------------------------------------------ saved pipeline, fresh process


def test_saved_pipeline_runs_in_a_fresh_process(classifier, crafted, tmp_path):
    folder = tmp_path / "saved-pipeline"
    classifier.save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["traffic-classification"]["impl"] == (
        "pipeline_traffic.TrafficClassificationPipeline"
    )
    assert (folder / "pipeline_traffic.py").is_file() and (folder / "preprocessor_config.json").is_file()
    expected = classifier(str(crafted))
    flows = list(iter_flows(str(crafted), FlowOptions()))
    np.save(tmp_path / "payload.npy", np.stack([f.input_bytes for f in flows]))
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        sys.modules["mmae_hf"] = None  # the package is not installed: only the remote code may run
        from transformers import pipeline
        classify = pipeline(model={str(folder)!r}, trust_remote_code=True)
        assert type(classify).__module__.startswith("transformers_modules"), type(classify).__module__
        arrays = classify({{"input_bytes": np.load({str(tmp_path / "payload.npy")!r})}})
        try:
            classify({str(crafted)!r})
            raise SystemExit("pcap input without mmae-hf should fail")
        except ImportError as error:
            assert "mmae-hf package (pip install . in a clone" in str(error)
        del sys.modules["mmae_hf"]  # now the package is importable: pcap input works through the remote code
        from_pcap = classify({str(crafted)!r})
        print(json.dumps({{"arrays": [r["score"] for r in arrays], "pcap": [r["score"] for r in from_pcap]}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["pcap"] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    assert sorted(scores["arrays"]) == pytest.approx(sorted(r["score"] for r in expected), abs=1e-6)
