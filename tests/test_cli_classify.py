"""mmae-classify and mmae-shortcut-report, run in-process on crafted and real (committed sample) captures."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from mmae_hf import MMAEForSequenceClassification
from mmae_hf.cli import classify_main, shortcut_report_main
from mmae_hf.pipeline_traffic import TrafficClassificationPipeline
from test_pipeline_traffic import CRAFTED_FLOWS, LABELS, SINGLE_FLOW_CAPTURES, save_model, tiny_config, write_capture


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = MMAEForSequenceClassification(tiny_config(ood_threshold=0.5)).eval()
    return save_model(tmp_path_factory.mktemp("cli-model"), model)


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    """Six real single-flow captures in a folder tree plus one crafted capture with three flows and ARP noise."""
    root = tmp_path_factory.mktemp("captures")
    folders = {
        "Chat": ("tls-chat-00", "smtp-starttls-00", "dtls-messaging-00"),
        "Web": ("https-api-00", "https-bulk-00", "udp-stream-00"),
    }
    for label, names in folders.items():
        (root / label).mkdir()
        for name in names:
            shutil.copy(SINGLE_FLOW_CAPTURES / f"{name}.pcap", root / label / f"{name}.pcap")
    write_capture(root / "crafted.pcap", CRAFTED_FLOWS, arp=2)
    return root


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_classify_folder_to_csv_with_summary(model_dir, capture_dir, tmp_path, capsys):
    output = tmp_path / "out" / "flows.csv"
    code = classify_main(
        [
            str(capture_dir),
            "--model",
            str(model_dir),
            "--output",
            str(output),
            "--batch-size",
            "4",
            "--top-k",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    rows = read_csv(output)
    assert len(rows) == 6 + len(CRAFTED_FLOWS)
    assert {
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "protocol",
        "start_time",
        "end_time",
        "packet_count",
        "label",
        "score",
        "ood",
        "label_1",
        "score_1",
        "label_2",
        "score_2",
    } <= set(rows[0])
    assert all(r["label"] == r["label_1"] and r["label"] in LABELS for r in rows)
    assert all(float(r["score_1"]) >= float(r["score_2"]) for r in rows)
    summary = json.loads((tmp_path / "out" / "flows.csv.summary.json").read_text())
    assert summary["flows"] == len(rows) and summary["files"] == 7
    assert sum(summary["flows_per_label"].values()) == len(rows)
    assert summary["ood_threshold"] == 0.5
    assert summary["ood_flows"] == sum(r["ood"] == "True" for r in rows)
    assert summary["packets_skipped"] == {"non_ip": 2} and summary["errors"] == []
    printed = capsys.readouterr().out
    assert f"classified {len(rows)} flows from 7 capture(s)" in printed and "non_ip 2" in printed


def test_output_formats_agree(model_dir, capture_dir, tmp_path):
    import pyarrow.parquet as pq

    paths = {fmt: tmp_path / f"flows.{fmt}" for fmt in ("csv", "jsonl", "parquet")}
    for path in paths.values():
        assert (
            classify_main(
                [
                    str(capture_dir / "Chat"),
                    "--model",
                    str(model_dir),
                    "--output",
                    str(path),
                    "--batch-size",
                    "2",
                    "--no-progress",
                ]
            )
            == 0
        )
    from_csv = [(r["src_port"], r["label"]) for r in read_csv(paths["csv"])]
    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    from_jsonl = [(str(r["src_port"]), r["label"]) for r in lines]
    table = pq.read_table(paths["parquet"]).to_pylist()
    from_parquet = [(str(r["src_port"]), r["label"]) for r in table]
    assert from_csv == from_jsonl == from_parquet and len(from_csv) == 3
    assert len(lines[0]["top_k"]) == 3 and isinstance(lines[0]["ood"], bool)


def test_arp_only_capture_zero_flows_exit_zero(model_dir, tmp_path, capsys):
    capture = write_capture(tmp_path / "arp.pcap", flows=(), arp=4)
    output = tmp_path / "flows.jsonl"
    assert classify_main([str(capture), "--model", str(model_dir), "--output", str(output), "--no-progress"]) == 0
    assert output.read_text() == ""
    summary = json.loads((tmp_path / "flows.jsonl.summary.json").read_text())
    assert summary["flows"] == 0 and summary["packets_skipped"] == {"non_ip": 4} and summary["errors"] == []
    assert "no TCP/UDP flow found" in capsys.readouterr().out


def test_damaged_and_missing_captures_are_reported_and_good_flows_kept(model_dir, capture_dir, tmp_path, capsys):
    data = write_capture(tmp_path / "intact.pcap", CRAFTED_FLOWS).read_bytes()
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(data[:-30])
    not_a_capture = tmp_path / "notes.pcap"
    not_a_capture.write_text("these are notes, not packets\n")
    good = sorted((capture_dir / "Web").glob("*.pcap"))
    output = tmp_path / "flows.csv"
    code = classify_main(
        [
            str(good[0]),
            str(damaged),
            str(tmp_path / "missing.pcap"),
            str(not_a_capture),
            str(good[1]),
            "--model",
            str(model_dir),
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    assert code == 1
    rows = read_csv(output)
    sources = [r["source_file"] for r in rows]
    assert sum(s.endswith(good[0].name) for s in sources) == 1 and sum(s.endswith(good[1].name) for s in sources) == 1
    assert any(s.endswith("damaged.pcap") for s in sources)  # flows read before the damage
    summary = json.loads((tmp_path / "flows.csv.summary.json").read_text())
    assert summary["files_with_errors"] == 3
    for name in ("damaged.pcap", "missing.pcap", "notes.pcap"):
        assert any(name in e["error"] for e in summary["errors"]), name
    captured = capsys.readouterr()
    assert "damaged.pcap" in captured.err and "missing.pcap" in captured.err


def test_stream_is_lazy_and_batched(model_dir, capture_dir):
    """Bounded memory: sources are read only as batches are needed, and no batch exceeds batch_size."""
    classify = TrafficClassificationPipeline(
        model=MMAEForSequenceClassification.from_pretrained(model_dir), device=-1, task="traffic-classification"
    )
    files = sorted(str(p) for p in capture_dir.rglob("*.pcap") if p.parent != capture_dir)
    opened = []

    def sources():
        for path in files:
            opened.append(path)
            yield path

    stream = classify.predict_stream(sources(), batch_size=2)
    first = next(stream)
    assert len(first) == 2 and len(opened) <= 4  # one batch ahead at most
    rest = [len(batch) for batch in stream]
    assert max(rest) <= 2 and 2 + sum(rest) == len(files)


def test_explain_writes_per_flow_files(model_dir, capture_dir, tmp_path):
    explain = tmp_path / "explain"
    assert (
        classify_main(
            [
                str(capture_dir / "Web"),
                "--model",
                str(model_dir),
                "--output",
                str(tmp_path / "f.csv"),
                "--explain",
                str(explain),
                "--explain-limit",
                "2",
                "--explain-steps",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in explain.iterdir()) == [
        f"flow_0000{i}.{ext}" for i in range(2) for ext in ("json", "npy", "png")
    ]
    document = json.loads((explain / "flow_00000.json").read_text())
    first = read_csv(tmp_path / "f.csv")[0]
    assert document["explained_label"] == first["label"] and str(document["flow"]["src_port"]) == first["src_port"]
    assert np.load(explain / "flow_00001.npy").shape == (5, 320)
    assert document["method"] == "integrated_gradients" and document["completeness_delta"] is not None
    rollout = tmp_path / "rollout"
    assert (
        classify_main(
            [
                str(capture_dir / "Web"),
                "--model",
                str(model_dir),
                "--output",
                str(tmp_path / "g.csv"),
                "--explain",
                str(rollout),
                "--explain-limit",
                "1",
                "--explain-method",
                "rollout",
                "--no-progress",
            ]
        )
        == 0
    )
    document = json.loads((rollout / "flow_00000.json").read_text())
    assert document["method"] == "attention_rollout" and document["completeness_delta"] is None
    assert np.load(rollout / "flow_00000.npy").min() >= 0


def test_shortcut_report_cli(model_dir, tmp_path, capsys):
    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

    dataset = make_synthetic_traffic_dataset(num_classes=3, flows_per_class=8, seed=2, class_names=LABELS)
    dataset.save_to_disk(str(tmp_path / "dataset"))
    output = tmp_path / "report.json"
    assert (
        shortcut_report_main(
            [
                "--model",
                str(model_dir),
                "--dataset",
                str(tmp_path / "dataset"),
                "--split",
                "test",
                "--output",
                str(output),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    report = json.loads(output.read_text())
    assert report["split"] == "test" and report["num_flows"] == len(dataset["test"])
    assert report["preprocessing_mismatch"] == {}  # the dataset folder has no preprocessor_config.json
    for what in ("headers", "addresses", "ports", "payload"):
        entry = report["occlusions"][what]
        assert entry["accuracy_drop"] == pytest.approx(report["baseline"]["accuracy"] - entry["accuracy"])
    printed = capsys.readouterr().out
    assert "no payload" in printed and "no addresses" in printed
    # a dataset built with another anonymisation profile than the model's is flagged
    from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor

    MMAEFeatureExtractor(flow_options={"anonymize": "strict"}).save_pretrained(str(tmp_path / "dataset"))
    assert (
        shortcut_report_main(
            [
                "--model",
                str(model_dir),
                "--dataset",
                str(tmp_path / "dataset"),
                "--output",
                str(output),
                "--max-flows",
                "4",
            ]
        )
        == 0
    )
    report = json.loads(output.read_text())
    assert report["preprocessing_mismatch"] == {"anonymize": {"model": "default", "dataset": "strict"}}
    assert report["num_flows"] == 4
    assert "other flow options" in capsys.readouterr().err
    assert (
        shortcut_report_main(
            [
                "--model",
                str(model_dir),
                "--dataset",
                str(tmp_path / "dataset"),
                "--split",
                "nope",
                "--output",
                str(output),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == (
        f"mmae-shortcut-report: error: --split nope: dataset {tmp_path / 'dataset'} has "
        "no such split; it has test, train, validation\n"
    )


def test_without_output_flows_go_to_stdout_as_json_lines(model_dir, tmp_path, capsys):
    capture = write_capture(tmp_path / "crafted.pcap", CRAFTED_FLOWS)
    assert classify_main([str(capture), "--model", str(model_dir), "--top-k", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == len(CRAFTED_FLOWS) and all(len(r["top_k"]) == 1 for r in lines)
    assert f"classified {len(CRAFTED_FLOWS)} flows" in captured.err  # the summary stays off stdout
    assert not list(tmp_path.glob("*.summary.json"))


def test_preprocessing_mismatch_fills_options_that_older_configs_lack(tmp_path):
    from mmae_hf.cli import preprocessing_mismatch
    from mmae_hf.traffic import FlowOptions

    def config(name, options):
        (tmp_path / name).mkdir()
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps({"flow_options": options}))
        return str(tmp_path / name)

    old_options = FlowOptions().to_dict()
    del old_options["max_packets"]  # written before FlowOptions.max_packets existed
    old_model = config("old", old_options)
    assert preprocessing_mismatch(old_model, config("new", FlowOptions().to_dict())) == {}
    assert preprocessing_mismatch(old_model, config("capped", FlowOptions(max_packets=100).to_dict())) == {
        "max_packets": {"model": 0, "dataset": 100}
    }
