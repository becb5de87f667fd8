"""build_dataset on crafted pcap trees and manifests: contract, reports, determinism, errors, parallelism."""

import json
import os
import shutil
from pathlib import Path

import pytest
from dataset_pcaps import T0, flow, make_tree, write_pcap

from mmae_hf.traffic import FLOW_STAT_NAMES
from mmae_hf.traffic.dataset import build_dataset, load_traffic_dataset, read_manifest

SPEC = {"chat": 5, "video": 5, "web": 4}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = make_tree(tmp_path_factory.mktemp("tree"), SPEC, flows_per_file=3)
    # a capture in a sub-folder of its label folder, and a symlinked capture
    write_pcap(root / "web" / "sub" / "deep.pcap", [flow("web/deep", start=T0 + 99)])
    os.symlink(root / "web" / "cap00.pcap", root / "video" / "linked.pcap")  # same bytes, other label: a conflict
    return root


def _table_bytes(dd):
    return {s: dd[s].data.table.to_pydict() for s in dd}


def test_tree_build_contract_card_and_report(tree, tmp_path):
    out = tmp_path / "out"
    result = build_dataset(tree, out, split_by="file", seed=0, progress=False)
    dd = load_traffic_dataset(out)
    assert set(dd) == {"train", "validation", "test"}
    feats = dd["train"].features
    assert feats["label"].names == ["chat", "video", "web"]
    assert feats["input_bytes"].length == 1600 and feats["input_bytes"].feature.dtype == "uint8"
    assert feats["flow_stats"].length == len(FLOW_STAT_NAMES)
    assert dd["train"].data.table.schema.field("input_bytes").type.value_type.bit_width == 8
    names = set().union(*(dd[s]["source_file"] for s in dd))
    assert "web/sub/deep.pcap" in names and "video/linked.pcap" in names
    # every row names its capture, and the group (= file) never spans two splits
    per_split = {s: set(dd[s]["group"]) for s in dd}
    assert not (per_split["train"] & per_split["test"]) and not (per_split["train"] & per_split["validation"])
    report = json.loads((out / "build_report.json").read_text())
    assert report["split"]["groups_on_several_splits"] == []
    assert report["class_counts"] == result.report["class_counts"]
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["flow_options"] == report["flow_options"]
    assert preprocessor["feature_extractor_type"] == "MMAEFeatureExtractor"
    assert sum(report["class_counts"]["train"].values()) == len(dd["train"])
    assert report["packets"]["packets_read"] == report["packets"]["packets_in_flows"] > 0
    # the linked copy of web/cap00 is a label conflict (same payloads, labels video and web)
    conflicts = report["duplicates"]["label_conflicts"]
    assert conflicts and all(set(c["labels"]) == {"video", "web"} for c in conflicts)
    assert report["duplicates"]["removed_total"] == 3
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    assert card.data.mmae_hf["class_counts"] == report["class_counts"]
    assert card.data.mmae_hf["anonymization"] == "default"
    assert "`iat_mean` | seconds" in card.text and "| **total** |" in card.text


def test_same_seed_identical_different_seed_differs_and_num_proc_is_deterministic(tree, tmp_path):
    a = build_dataset(tree, tmp_path / "a", seed=1, progress=False).dataset
    b = build_dataset(tree, tmp_path / "b", seed=1, num_proc=2, progress=False).dataset
    c = build_dataset(tree, None, seed=2, progress=False).dataset
    spilled = build_dataset(tree, None, seed=1, progress=False, max_memory_mb=0)  # every capture via disk
    assert spilled.report["captures_spilled_to_disk"] == len(spilled.report["files"])
    assert _table_bytes(a) == _table_bytes(b) == _table_bytes(spilled.dataset)
    for name in ("dataset_dict.json", "train/dataset_info.json", "train/state.json", "train/data-00000-of-00001.arrow"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert {s: sorted(set(a[s]["group"])) for s in a} != {s: sorted(set(c[s]["group"])) for s in c}


def test_flow_and_time_splits_and_caps(tree):
    res = build_dataset(
        tree, None, split_by="time", max_flows_per_class=10, min_flows_per_class=14, progress=False, dedup=False
    )
    dd, rep = res.dataset, res.report
    assert rep["flows"]["classes_below_minimum"] == {"web": 13}  # 4 files x 3 flows + deep.pcap
    assert dd["train"].features["label"].names == ["chat", "video"]
    assert {c: sum(rep["class_counts"][s][c] for s in rep["class_counts"]) for c in ("chat", "video")} == {
        "chat": 10,
        "video": 10,
    }
    for split in ("validation", "test"):
        later = dd[split]
        for c in range(2):
            train_times = [t for t, l in zip(dd["train"]["start_time"], dd["train"]["label"]) if l == c]
            held_times = [t for t, l in zip(later["start_time"], later["label"]) if l == c]
            assert min(held_times) >= max(train_times)


def test_options_chatter_min_packets_and_addresses(tmp_path):
    root = tmp_path / "in"
    write_pcap(
        root / "a" / "x.pcap",
        [flow("a1", packets=4), flow("dns", proto="udp", dport=53, sport=5000), flow("short", packets=1, sport=41000)],
    )
    write_pcap(root / "b" / "y.pcap", [flow("b1", packets=4)])
    res = build_dataset(
        root,
        tmp_path / "out",
        split_by="flow",
        drop_service_chatter=True,
        min_packets=2,
        keep_addresses=True,
        validation_size=0.0,
        test_size=0.0,
        progress=False,
    )
    assert len(load_traffic_dataset(tmp_path / "out")["test"]) == 0  # empty splits save and load
    with pytest.raises(ValueError, match=r"no flows left to write: 2 flows extracted from 2 captures"):
        build_dataset(root, None, min_packets=2, drop_service_chatter=True, min_flows_per_class=5, progress=False)
    rep = res.report
    assert rep["packets"]["skipped"] == {"filtered": 3, "short_flow": 1}
    assert rep["flows"]["extracted"] == 2
    train = res.dataset["train"]
    assert train["dst_port"] == [443, 443] and train["src_ip"] == ["10.0.0.1", "10.0.0.1"]
    assert rep["flow_options"]["drop_service_chatter"] is True and rep["flow_options"]["min_packets"] == 2


def test_max_packets_caps_every_flow_and_travels_in_the_preprocessor_config(tmp_path):
    from mmae_hf.traffic import FlowOptions

    root = tmp_path / "in"
    write_pcap(root / "a" / "x.pcap", [flow("a1", packets=5), flow("a2", packets=2, sport=41000)])
    write_pcap(root / "b" / "y.pcap", [flow("b1", packets=4)])
    res = build_dataset(
        root, tmp_path / "out", split_by="flow", max_packets=3, validation_size=0.0, test_size=0.0, progress=False
    )
    rep = res.report
    assert rep["flow_options"]["max_packets"] == 3
    assert rep["packet_caps"] == {"source": "max_packets", "max_packets_by_class": {"a": 3, "b": 3}}
    assert rep["packets"]["skipped"] == {"over_packet_cap": 3} and rep["packets"]["packets_in_flows"] == 8
    assert rep["files"]["a/x.pcap"]["packets_skipped"] == {"over_packet_cap": 2}
    assert rep["files"]["b/y.pcap"]["max_packets"] == 3
    train = res.dataset["train"]
    assert sorted(train["packet_count"]) == [2, 3, 3]
    assert all(row["packet_lengths"][3:] == [0, 0] and row["flow_stats"][0] == row["packet_count"] for row in train)
    preprocessor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert FlowOptions.from_dict(preprocessor["flow_options"]).max_packets == 3
    with pytest.raises(ValueError, match="max_packets must be an integer >= 0"):
        build_dataset(root, None, max_packets=-1, progress=False)


def test_damaged_capture_is_reported_and_good_flows_kept(tmp_path):
    root = tmp_path / "in"
    make_tree(root, {"a": 2, "b": 2}, flows_per_file=2)
    good = (root / "a" / "cap00.pcap").read_bytes()
    (root / "a" / "cut.pcap").write_bytes(good[: len(good) - 20])  # last record truncated
    (root / "b" / "junk.pcap").write_bytes(b"this is not a capture at all")
    res = build_dataset(root, None, progress=False)
    errors = {e["file"]: e["error"] for e in res.report["errors"]}
    assert set(errors) == {"a/cut.pcap", "b/junk.pcap"}
    assert "junk.pcap" in errors["b/junk.pcap"]
    assert res.report["files"]["a/cut.pcap"]["flows"] >= 1  # flows before the damage survive
    with pytest.raises(ValueError, match="a/cut.pcap: .*byte offset"):
        build_dataset(root, None, progress=False, strict=True)


def test_manifest_with_groups_and_its_errors(tree, tmp_path):
    lines = ["file,label,source"]
    for label, n in SPEC.items():
        lines += [f"{label}/cap{j:02d}.pcap,{label},session{j % 2}" for j in range(n)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    res = build_dataset(tree, None, manifest=manifest, group_column="source", progress=False)
    groups = {s: set(res.dataset[s]["group"]) for s in res.dataset}
    assert groups["train"] | groups["validation"] | groups["test"] == {"session0", "session1"}
    assert res.report["split"]["groups_on_several_splits"] == []

    def bad(text, match, **kw):
        path = tmp_path / "bad.csv"
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_manifest(path, root=tree, **kw)

    bad("path,label\nchat/cap00.pcap,chat\n", r"bad.csv:1: header must name the columns 'file' and 'label'")
    bad("file,label\nchat/cap00.pcap,chat\nchat/nope.pcap,chat\n", r"bad.csv:3: file 'chat/nope.pcap' does not exist")
    bad("file,label\nchat/cap00.pcap,\n", r"bad.csv:2: empty 'label' for file 'chat/cap00.pcap'")
    bad("file,label\nchat/cap00.pcap,chat,extra\n", r"bad.csv:2: expected 2 comma-separated fields")
    bad("file,label\nchat/cap00.pcap,chat\nchat/cap00.pcap,web\n", r"bad.csv:3: .* listed twice \(first on line 2\)")
    bad("file,label\nchat/cap00.pcap,chat\n", r"group column 'session' is not in the header", group_column="session")


def test_output_folder_protection_and_bad_input(tree, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_dataset(tree, out, progress=False)
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="no captures found"):
        build_dataset(empty, None, progress=False)
    shutil.copy(tree / "chat" / "cap00.pcap", tmp_path / "top.pcap")
    with pytest.raises(NotADirectoryError):
        build_dataset(tmp_path / "missing", None, progress=False)


def test_cli_push_to_hub_and_load_back(tree, tmp_path):
    """The CLI builds, saves and publishes; load_traffic_dataset reads the Hub copy back (fake Hub, subprocess)."""
    import subprocess
    import sys
    import textwrap

    from fake_hub import FakeHub

    repo_root = Path(__file__).resolve().parents[1]
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, sys
        sys.argv = ["build_dataset.py", "--input", {str(tree)!r}, "--output", {str(tmp_path / "out")!r},
                    "--push-to-hub", "tester/traffic", "--seed", "3", "--no-progress", "--test-size", "0"]
        sys.path.insert(0, {str(repo_root / "dataset_scripts")!r})
        import build_dataset
        assert build_dataset.main() == 0
        from mmae_hf.traffic.dataset import load_traffic_dataset
        hub = load_traffic_dataset("tester/traffic")
        local = load_traffic_dataset({str(tmp_path / "out")!r})
        assert sorted(hub) == ["train", "validation"] and len(local["test"]) == 0  # the empty split stays local
        for split in ("train", "validation"):
            assert hub[split].features == local[split].features, split
            assert hub[split]["input_bytes"] == local[split]["input_bytes"], split
            assert hub[split]["source_file"] == local[split]["source_file"], split
        print("LOADED-OK")
    """)
    )
    with FakeHub() as hub:
        proc = subprocess.run(
            [sys.executable, str(script)], env=hub.env(), capture_output=True, text=True, timeout=240, cwd=repo_root
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "LOADED-OK" in proc.stdout and "| **total** |" in proc.stdout
        files = hub.files("tester/traffic", "dataset")
        assert {
            "README.md",
            "build_report.json",
            "preprocessor_config.json",
            "data/train-00000-of-00001.parquet",
        } <= set(files)
        card = hub.file_bytes("tester/traffic", "README.md", "dataset").decode()
        assert "dataset_info:" in card and "mmae_hf:" in card and "## Flow statistics" in card
        report = json.loads(hub.file_bytes("tester/traffic", "build_report.json", "dataset"))
        assert report["split"]["seed"] == 3


NDPI_LAYOUT = {
    "Chat": {"Alpha": 4, "Bravo": 1, "Charlie": 3},
    "VPN": {"Delta": 5, "Echo": 2},
    "Web": {"Foxtrot": 4, "Golf": 3, "Hotel": 1},
}  # {class: {app: source captures}}


@pytest.fixture(scope="module")
def ndpi_like(tmp_path_factory):
    """A tree laid out like the nDPI development set: one pcap per flow, and a manifest.csv naming each file's
    class, app (``ndpi_app``) and the capture it was cut from (``source_pcap``); several flows per capture."""
    import csv

    root = tmp_path_factory.mktemp("ndpi-like")
    rows = []
    for li, (label, apps) in enumerate(NDPI_LAYOUT.items()):
        for app, captures in apps.items():
            for c in range(captures):
                for f in range(3):
                    name = f"{label}/{app}__cap{c}__f{f:04d}.pcap"
                    write_pcap(
                        root / name, [flow(name, packets=4, sport=41000 + f, dport=443 + li, start=T0 + 60 * c + f)]
                    )
                    rows.append({"file": name, "label": label, "ndpi_app": app, "source_pcap": f"{app}-{c}.pcap"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def manifest_column(data, column):
    import csv

    with open(data / "manifest.csv", newline="") as fh:
        return {row["file"]: row[column] for row in csv.DictReader(fh)}


def check_split_by_source_capture(data, num_classes, min_groups):
    """The nDPI recipe: one file per flow, grouped by the manifest's source capture; no capture on two sides."""
    res = build_dataset(data, None, recipe="ndpi-encrypted-services", seed=0, progress=False, num_proc=2)
    source_of = manifest_column(data, "source_pcap")
    seen = {}
    for split in res.dataset:
        for name, group in zip(res.dataset[split]["source_file"], res.dataset[split]["group"]):
            assert group == source_of[name]
            seen.setdefault(group, set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())
    assert len(seen) >= min_groups and res.report["split"]["groups_on_several_splits"] == []
    assert len(res.dataset["train"].features["label"].names) == num_classes
    assert res.report["split"]["classes_missing_from_splits"] == {}
    assert res.report["errors"] == []


def check_seen_apps_split(data, **sizes):
    """--seen-column ndpi_app: still no capture on two sides, and every held-out app is also in train."""
    res = build_dataset(
        data,
        None,
        recipe="ndpi-encrypted-services",
        seen_column="ndpi_app",
        seed=0,
        progress=False,
        num_proc=2,
        **sizes,
    )
    app_of = manifest_column(data, "ndpi_app")
    apps = {s: [app_of[name] for name in res.dataset[s]["source_file"]] for s in res.dataset}
    groups = {s: set(res.dataset[s]["group"]) for s in res.dataset}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    assert not (groups["validation"] & groups["test"])
    assert set(apps["test"]) | set(apps["validation"]) <= set(apps["train"])
    split = res.report["split"]
    assert split["held_out_flows_with_keys_unseen_in_train"] == 0
    assert split["seen_column_keys_per_split"]["train"] == len(set(apps["train"]))
    assert res.report["input"]["seen_column"] == "ndpi_app"
    with pytest.raises(ValueError, match="seen column 'app' is not in the header"):
        build_dataset(data, None, recipe="ndpi-encrypted-services", seen_column="app", progress=False)
    with pytest.raises(ValueError, match="seen_column 'ndpi_app' needs a group split .* not 'flow'"):
        build_dataset(
            data, None, recipe="ndpi-encrypted-services", seen_column="ndpi_app", split_by="flow", progress=False
        )
    return res, apps


def test_ndpi_recipe_splits_by_source_capture_not_by_file(ndpi_like):
    check_split_by_source_capture(ndpi_like, num_classes=3, min_groups=20)


def test_ndpi_seen_apps_split_tests_known_services_in_new_captures(ndpi_like):
    res, apps = check_seen_apps_split(ndpi_like, validation_size=0.2, test_size=0.2)
    single_capture_apps = {"Bravo", "Hotel"}  # only one capture: they can only be in train
    assert single_capture_apps <= set(apps["train"])
    assert not single_capture_apps & (set(apps["test"]) | set(apps["validation"]))
    assert len(res.dataset["test"]) >= 6


@pytest.mark.shared_data
def test_ndpi_recipe_splits_the_real_set_by_source_capture(shared_dir):
    check_split_by_source_capture(shared_dir / "data" / "ndpi-encrypted-services", num_classes=9, min_groups=100)


@pytest.mark.shared_data
def test_ndpi_seen_apps_split_on_the_real_set(shared_dir):
    res, apps = check_seen_apps_split(shared_dir / "data" / "ndpi-encrypted-services")
    assert len(res.dataset["test"]) > 80 and len(set(apps["test"])) > 10


def test_seen_column_without_a_manifest_is_refused(tree):
    with pytest.raises(ValueError, match="seen_column 'app' needs a CSV manifest.*recipe 'iscx-tor2016'"):
        build_dataset(tree, None, recipe="iscx-tor2016", seen_column="app", split_by="file", progress=False)
    with pytest.raises(ValueError, match="seen_column 'app' needs a CSV manifest"):
        build_dataset(tree, None, seen_column="app", progress=False)


def test_cli_reports_bad_input_in_one_line(tree, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_dataset_cli", Path(__file__).resolve().parents[1] / "dataset_scripts" / "build_dataset.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,label\nchat/cap00.pcap,chat\nchat/cap99.pcap,chat\n")
    assert (
        cli.main(["--input", str(tree), "--manifest", str(manifest), "--output", str(tmp_path / "o"), "--no-progress"])
        == 2
    )
    err = capsys.readouterr().err
    assert "labels.csv:3: file 'chat/cap99.pcap' does not exist" in err and "Traceback" not in err
    assert (
        cli.main(
            [
                "--input",
                str(tree),
                "--output",
                str(tmp_path / "o2"),
                "--split-by",
                "flow",
                "--seed",
                "5",
                "--flow-option",
                "idle_timeout=30",
                "--max-flows-per-class",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "o2" / "build_report.json").read_text())
    assert report["flow_options"]["idle_timeout"] == 30 and report["split"]["method"] == "flow"
    assert all(sum(report["class_counts"][s][c] for s in report["class_counts"]) == 4 for c in report["classes"])
    assert report["command"].startswith("build_dataset.py --input")
