"""The offline stand-in Hub: a real huggingface_hub / datasets client round-trips through it."""

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from fake_hub import FakeHub

CLIENT = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_dataset
    from huggingface_hub import HfApi, hf_hub_download

    features = Features({"payload": List(Value("uint8"), length=4),
                         "label": ClassLabel(names=["chat", "video"]),
                         "source_file": Value("string")})
    dd = DatasetDict({
        "train": Dataset.from_dict({"payload": [[1, 2, 3, 4], [5, 6, 7, 8]], "label": [0, 1],
                                    "source_file": ["a.pcap", "b.pcap"]}, features=features),
        "test": Dataset.from_dict({"payload": [[9, 9, 9, 9]], "label": [1], "source_file": ["c.pcap"]},
                                  features=features),
    })
    dd.push_to_hub("tester/traffic-tiny")
    back = load_dataset("tester/traffic-tiny")
    assert back["train"].features == features, back["train"].features
    assert back["train"]["payload"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert back["test"]["source_file"] == ["c.pcap"]

    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump({"model_type": "mmae"}, fh)
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(bytes(range(256)) * 4)
    api = HfApi()
    api.create_repo("tester/mmae-tiny", exist_ok=True)
    api.create_repo("tester/mmae-tiny", exist_ok=True)   # second call: 409 swallowed by exist_ok
    api.upload_folder(folder_path=folder, repo_id="tester/mmae-tiny", commit_message="add weights")
    path = hf_hub_download("tester/mmae-tiny", "model.safetensors")
    assert open(path, "rb").read() == bytes(range(256)) * 4
    assert sorted(api.list_repo_files("tester/mmae-tiny")) == [".gitattributes", "config.json", "model.safetensors"]
    try:
        hf_hub_download("tester/mmae-tiny", "missing.bin")
    except Exception as exc:
        print("MISSING:" + type(exc).__name__)
    print("CLIENT-OK")
    """
)


def test_round_trip_dataset_and_model_files(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with FakeHub() as hub:
        proc = subprocess.run([sys.executable, str(script)], env=hub.env(), capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "CLIENT-OK" in proc.stdout
        assert "EntryNotFoundError" in proc.stdout  # RemoteEntryNotFoundError in hub 2.4
        files = hub.files("tester/traffic-tiny", "dataset")
        assert "data/train-00000-of-00001.parquet" in files and "README.md" in files
        # datasets writes the features into the card's YAML
        assert b"class_label" in hub.file_bytes("tester/traffic-tiny", "README.md", "dataset")
        assert hub.files("tester/mmae-tiny")["model.safetensors"] == 1024
        assert hub.commits("tester/mmae-tiny")[-1] == "add weights"
        assert ("dataset", "tester/traffic-tiny") in hub.repos()


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers), resp.read()


def test_errors_carry_hub_error_codes_and_ranges_work():
    with FakeHub() as hub:
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{hub.url}/api/models/tester/nope")
        assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "RepoNotFound"

        req = urllib.request.Request(
            f"{hub.url}/api/repos/create",
            method="POST",
            data=json.dumps({"name": "r", "type": "dataset"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp)["url"] == f"{hub.url}/datasets/tester/r"
        commit = b"\n".join(
            json.dumps(line).encode()
            for line in [
                {"key": "header", "value": {"summary": "s"}},
                {"key": "file", "value": {"path": "x/y.txt", "content": "aGVsbG8gd29ybGQ=", "encoding": "base64"}},
            ]
        )
        req = urllib.request.Request(f"{hub.url}/api/datasets/tester/r/commit/main", method="POST", data=commit)
        with urllib.request.urlopen(req, timeout=10) as resp:
            sha = json.load(resp)["commitOid"]
        status, headers, body = _get(f"{hub.url}/datasets/tester/r/resolve/main/x/y.txt", {"Range": "bytes=6-"})
        assert status == 206 and body == b"world" and headers["X-Repo-Commit"] == sha
        _, _, tree = _get(f"{hub.url}/api/datasets/tester/r/tree/main?recursive=true")
        assert [(e["type"], e["path"]) for e in json.loads(tree)] == [
            ("file", ".gitattributes"),
            ("directory", "x"),
            ("file", "x/y.txt"),
        ]
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{hub.url}/api/datasets/tester/r/tree/main/nothing")
        assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "EntryNotFound"
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{hub.url}/datasets/tester/r/resolve/main/nothing.txt")
        assert err.value.headers["X-Error-Code"] == "EntryNotFound"
