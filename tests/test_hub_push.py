"""train/finetune.py --push_to_hub against the offline FakeHub, then load by repo id in a fresh process."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from fake_hub import FakeHub
from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "tester/mmae-tiny-synthetic"

LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    import mmae_hf
    from transformers import AutoConfig, AutoModelForSequenceClassification
    local_dir, repo_id = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 1600), dtype=torch.uint8)
    hub = AutoModelForSequenceClassification.from_pretrained(repo_id).eval()
    local = AutoModelForSequenceClassification.from_pretrained(local_dir).eval()
    with torch.no_grad():
        same = torch.equal(hub(input_bytes=x).logits, local(input_bytes=x).logits)
    print("RESULT" + json.dumps({"same_logits": same, "class": type(hub).__name__,
                                 "id2label": hub.config.id2label, "ood": hub.config.ood_threshold}))
    """
)


def test_push_to_hub_and_load_by_repo_id(tmp_path):
    dsd = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=8, seed=0)
    dsd.save_to_disk(str(tmp_path / "data"))
    (tmp_path / "loader.py").write_text(LOADER)
    out = tmp_path / "run"
    with FakeHub() as hub:
        env = hub.env()
        push = subprocess.run(
            [
                sys.executable,
                str(REPO / "train" / "finetune.py"),
                "--dataset",
                str(tmp_path / "data"),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--report_to",
                "none",
                "--push_to_hub",
                "--hub_model_id",
                REPO_ID,
                "--dataset_name",
                "tester/traffic-synthetic",
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert push.returncode == 0, push.stdout[-2000:] + push.stderr[-4000:]
        assert "\r" not in push.stdout + push.stderr  # no progress bars in a log (stderr is no terminal)
        files = hub.files(REPO_ID)
        for name in (
            "config.json",
            "model.safetensors",
            "README.md",
            "modeling_mmae.py",
            "configuration_mmae.py",
            "test_confusion.png",
            "test_metrics.json",
        ):
            assert name in files, (name, sorted(files))
        readme = hub.file_bytes(REPO_ID, "README.md").decode()
        meta = yaml.safe_load(readme.split("---")[1])
        results = json.loads((out / "results.json").read_text())
        metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
        assert metrics["Macro F1"] == results["test"]["macro_f1"]
        assert meta["datasets"] == ["tester/traffic-synthetic"]
        assert f'pipeline("traffic-classification", model="{REPO_ID}")' in readme  # usage names the real repo
        assert results["hub_url"].endswith(REPO_ID)

        load = subprocess.run(
            [sys.executable, str(tmp_path / "loader.py"), str(out / "model"), REPO_ID],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert load.returncode == 0, load.stderr[-4000:]
    line = next(line for line in load.stdout.splitlines() if line.startswith("RESULT"))
    loaded = json.loads(line[len("RESULT") :])
    assert loaded["same_logits"] is True
    assert loaded["class"] == "MMAEForSequenceClassification"
    assert loaded["id2label"] == {"0": "app_0", "1": "app_1"}
    assert loaded["ood"] == results["ood_threshold"]
