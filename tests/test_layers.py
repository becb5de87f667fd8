"""Layers point one way: the torch-free side stays torch-free, the package imports lazily, registration still happens
on `import mmae_hf`, and one data contract is read by everyone."""

import ast
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmae_hf"


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)  # fmt: skip


@pytest.mark.parametrize("module", ["mmae_hf.traffic", "mmae_hf.traffic.dataset", "mmae_hf.data_contract"])
def test_torch_free_modules_import_neither_torch_nor_transformers(module, tmp_path):
    result = run_python(
        f"""
        import json, sys, time
        start = time.perf_counter()
        import {module}
        seconds = time.perf_counter() - start
        heavy = sorted({{name.split(".")[0] for name in sys.modules}} & {{"torch", "transformers", "datasets"}})
        print(json.dumps({{"seconds": seconds, "heavy": heavy}}))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"import {module}: {report['seconds']:.3f} s")  # the module-import timing (pytest -s shows it)
    assert report["heavy"] == [], f"import {module} loaded {report['heavy']}"
    assert report["seconds"] < 3.0, report  # torch + transformers alone take 4-7 s here


# how a process starts -> what must work after it (`FOLDER` is a saved MMAEModel folder)
REGISTRATION_CASES = {
    "import mmae_hf": """
        import mmae_hf
        from transformers import AutoModel
        from transformers.pipelines import PIPELINE_REGISTRY
        assert type(AutoModel.from_pretrained(FOLDER)).__module__ == "mmae_hf.modeling_mmae"
        assert "traffic-classification" in PIPELINE_REGISTRY.supported_tasks
        """,
    "torch-free side first, then a model-side module (as the training scripts do)": """
        import sys
        from mmae_hf.traffic.atomic import atomic_write_text
        assert "transformers" not in sys.modules
        from mmae_hf.modeling_mmae import MMAEModel
        from transformers import AutoModel
        assert type(AutoModel.from_pretrained(FOLDER)) is MMAEModel
        assert MMAEModel._auto_class == "AutoModel"  # save_pretrained copies the remote-code files
        """,
    "torch-free side first, then a model-side name": """
        import sys
        import mmae_hf.traffic
        assert "transformers" not in sys.modules
        import mmae_hf
        mmae_hf.MMAEConfig
        from transformers import AutoModel
        assert type(AutoModel.from_pretrained(FOLDER)).__module__ == "mmae_hf.modeling_mmae"
        """,
}


def test_import_mmae_hf_still_registers_the_auto_classes(tmp_path):
    from mmae_hf import MMAEConfig, MMAEForSequenceClassification

    folder = tmp_path / "m"
    MMAEForSequenceClassification(MMAEConfig.from_preset("mmae-tiny", num_labels=2)).save_pretrained(folder)
    for case, script in REGISTRATION_CASES.items():
        result = run_python(f"FOLDER = {str(folder)!r}\n" + textwrap.dedent(script) + "print('OK')\n", tmp_path)
        assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (case, result.stderr[-2000:])


def imported_modules(path: Path) -> set[tuple[int, str]]:
    """(relative level, module) of every import statement in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {(0, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.level, node.module or ""))
    return found


def test_traffic_imports_nothing_above_it():
    for path in sorted((PACKAGE / "traffic").glob("*.py")):
        for level, module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in ("torch", "transformers"), f"{path.name} imports {module}"
            if level == 2:  # from .. import: only the data contract (the bottom layer) and the version
                assert module in ("data_contract", ""), f"{path.name} imports ..{module}"
            assert not (level == 0 and top == "mmae_hf" and not module.startswith("mmae_hf.traffic")), path.name


def test_installed_package_holds_no_test_helpers_and_explain_no_pipeline_helpers():
    assert not (PACKAGE / "testing" / "fake_hub.py").exists()
    assert (0, "mmae_hf.pipeline_traffic") not in imported_modules(PACKAGE / "explain.py")
    assert (1, "pipeline_traffic") not in imported_modules(PACKAGE / "explain.py")


def test_remote_code_files_import_only_torch_numpy_transformers_and_siblings():
    for name in (
        "configuration_mmae",
        "modeling_mmae",
        "pmp",
        "feature_extraction_mmae",
        "pipeline_traffic",
        "data_contract",
    ):
        source = (PACKAGE / f"{name}.py").read_text()
        assert (0, "__future__") not in imported_modules(PACKAGE / f"{name}.py")  # it would switch off @strict
        for node in ast.parse(source).body:  # module level (function-level imports sit in try blocks)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                level = getattr(node, "level", 0)
                for module in modules:
                    allowed = level == 1 and "." not in module or module.split(".")[0] in (
                        "torch", "numpy", "transformers", "huggingface_hub", "math", "os", "inspect", "time", "json",
                        "collections", "dataclasses", "typing")  # fmt: skip
                    assert allowed, f"{name}.py imports {'.' * level}{module}"


# ------------------------------------------------------------------------------------------------ the data contract
def test_the_dataset_builder_writes_the_feature_extractors_file(tmp_path):
    from mmae_hf.data_contract import PREPROCESSOR_CONFIG_NAME, preprocessor_config_json
    from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor
    from mmae_hf.traffic import FlowOptions

    options = FlowOptions(anonymize="strict", num_packets=3).to_dict()
    MMAEFeatureExtractor(flow_options=options).save_pretrained(tmp_path)
    assert (tmp_path / PREPROCESSOR_CONFIG_NAME).read_text() == preprocessor_config_json(options)


def test_header_field_table_matches_the_dissector():
    from mmae_hf.data_contract import IPV4, TCP, UDP
    from mmae_hf.explain import header_fields

    slot = np.zeros(320, np.uint8)
    slot[0], slot[9], slot[32] = 0x45, 6, 0x50  # IPv4, IHL 5; TCP; data offset 5
    names = {name: (start, end) for start, end, name in header_fields(slot, packet_length=40)}
    assert names["ip.total_length"] == (IPV4["total_length"].offset, IPV4["total_length"].end)
    assert names["tcp.flags"] == (20 + TCP["flags"].offset, 20 + TCP["flags"].end)
    assert UDP["checksum"].end == 8


def test_datasets_with_the_old_byte_column_are_renamed_on_load(tmp_path, caplog):
    from mmae_hf.testing.synthetic import make_synthetic_traffic_dataset
    from mmae_hf.traffic import load_traffic_dataset
    from mmae_hf.training.data import load_pretraining_split

    data = make_synthetic_traffic_dataset(num_classes=2, flows_per_class=8, seed=1)
    old = data.rename_column("input_bytes", "payload")  # what mmae-hf wrote before the rename
    old.save_to_disk(str(tmp_path / "old"))
    with caplog.at_level(logging.INFO, logger="mmae_hf.traffic.loading"):
        loaded = load_traffic_dataset(tmp_path / "old")
    assert "input_bytes" in loaded["train"].column_names and "payload" not in loaded["train"].column_names
    assert [r.message for r in caplog.records if "renamed" in r.message] and len(caplog.records) == 1
    assert loaded["train"]["input_bytes"] == data["train"]["input_bytes"]
    assert load_pretraining_split(str(tmp_path / "old")).column_names[0] == "input_bytes"
    with pytest.raises(FileNotFoundError, match="no dataset found"):
        (tmp_path / "empty").mkdir()
        load_traffic_dataset(tmp_path / "empty")


def test_the_pipeline_makes_a_default_feature_extractor_with_a_warning(tmp_path, caplog):
    import torch

    from mmae_hf import MMAEConfig, MMAEForSequenceClassification
    from mmae_hf.feature_extraction_mmae import MMAEFeatureExtractor
    from mmae_hf.pipeline_traffic import TrafficClassificationPipeline

    torch.manual_seed(0)
    model = MMAEForSequenceClassification(MMAEConfig.from_preset("mmae-tiny", num_labels=2)).eval()
    model.save_pretrained(tmp_path / "no-extractor")  # a folder without preprocessor_config.json
    loaded = MMAEForSequenceClassification.from_pretrained(tmp_path / "no-extractor").eval()
    with caplog.at_level(logging.WARNING):
        pipe = TrafficClassificationPipeline(model=loaded, task="traffic-classification")
    assert isinstance(pipe.feature_extractor, MMAEFeatureExtractor)
    assert any("default FlowOptions" in r.getMessage() for r in caplog.records), caplog.records
    flows = np.random.default_rng(0).integers(0, 256, (3, 1600), dtype=np.uint8)
    records = pipe({"input_bytes": flows, "src_port": np.array([1, 2, 3])})
    with torch.no_grad():
        expected = model(input_bytes=torch.from_numpy(flows)).logits.softmax(-1).max(-1).values
    assert [r["score"] for r in records] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [r["src_port"] for r in records] == [1, 2, 3]


def test_flow_record_payload_is_a_deprecated_alias():
    from mmae_hf.traffic import FlowRecord

    record = FlowRecord(
        np.arange(1600, dtype=np.uint8) % 7, *(np.zeros(5),) * 3, np.zeros(27), "a", "b", 1, 2, 6, 0.0, 1.0, 5, 500
    )
    with pytest.warns(DeprecationWarning, match="input_bytes"):
        assert record.payload is record.input_bytes
    assert record.to_row()["input_bytes"] is record.input_bytes and "payload" not in record.to_row()
