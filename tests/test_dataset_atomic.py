"""The dataset builder leaves a complete dataset or none: interrupts, full disks, FIFOs, worker counts, bad input."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dataset_pcaps import make_tree
from test_flow_limits import deadline

import mmae_hf.traffic.dataset as dataset_module
from mmae_hf.traffic.atomic import OutputWriteError
from mmae_hf.traffic.dataset import BuildOptions, build_dataset, load_traffic_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "dataset_scripts" / "build_dataset.py"


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("small"), {"chat": 3, "web": 3}, flows_per_file=2)


@pytest.fixture(scope="module")
def other_tree(tmp_path_factory):
    """A different input (more flows): a rebuild from it gives other row counts than ``small_tree``."""
    return make_tree(tmp_path_factory.mktemp("other"), {"chat": 4, "video": 4, "web": 4}, flows_per_file=3)


def _siblings(out: Path) -> list:
    """What a build may leave beside or inside its output: staging / retired folders, work folders."""
    around = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    inside = [p.name for p in out.iterdir() if p.name.startswith(".mmae_build_")] if out.is_dir() else []
    return around + inside


def _rows(folder):
    return {name: len(split) for name, split in load_traffic_dataset(folder).items()}


def _report_rows(folder):
    return json.loads((Path(folder) / "build_report.json").read_text())["split"]["rows_per_split"]


# ---------------------------------------------------------------- interrupts (a subprocess and a signal)
DRIVER = textwrap.dedent("""
    import importlib.util, os, signal, sys, time
    import mmae_hf.traffic.dataset as d

    point, signum = sys.argv[1], int(sys.argv[2])

    def stop_here(original):
        def hooked(*args, **kwargs):
            os.kill(os.getpid(), signum)
            time.sleep(30)  # the signal arrives meanwhile
            return original(*args, **kwargs)
        return hooked

    if point == "save":  # the new splits are on disk, the card / report / preprocessor config are not yet
        d._save_preprocessor = stop_here(d._save_preprocessor)
    else:  # while the split files are written
        d._SplitWriter.close = stop_here(d._SplitWriter.close)
    spec = importlib.util.spec_from_file_location("build_script", sys.argv[3])
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sys.exit(script.main(sys.argv[4:]))
""")


def _run_driver(tmp_path, point, signum, argv):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1")  # datasets' own bars (not the builder's)
    return subprocess.run(
        [sys.executable, str(driver), point, str(int(signum)), str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize("point, signum", [("save", signal.SIGINT), ("splits", signal.SIGTERM)])
def test_interrupted_overwrite_keeps_the_old_dataset(small_tree, other_tree, tmp_path, point, signum):
    out = tmp_path / "data"
    build_dataset(small_tree, out, progress=False, split_by="flow")
    before = _rows(out)
    done = _run_driver(
        tmp_path,
        point,
        signum,
        ["--input", str(other_tree), "--output", str(out), "--overwrite", "--no-progress", "--split-by", "flow"],
    )
    assert done.returncode == 128 + signum, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"build_dataset.py: interrupted by {signum.name}; nothing was written (an existing output folder is unchanged)"
    ], done.stderr  # one line, no traceback
    assert _rows(out) == before == _report_rows(out)  # the old dataset, whole
    assert _siblings(out) == []  # the staging folder is gone


def test_killed_build_leaves_nothing_in_the_way(small_tree, tmp_path):
    out = tmp_path / "fresh"
    done = _run_driver(
        tmp_path, "save", signal.SIGKILL, ["--input", str(small_tree), "--output", str(out), "--no-progress"]
    )
    assert done.returncode == -signal.SIGKILL
    assert not out.exists()  # never a half-written dataset at the output path
    assert len(_siblings(out)) == 1  # a SIGKILL cannot clean up: its staging folder stays (hidden) ...
    result = build_dataset(small_tree, out, progress=False)  # ... and the next run is not blocked by it
    assert _siblings(out) == [] and _rows(out) == _report_rows(out) == result.report["split"]["rows_per_split"]


# ---------------------------------------------------------------- full disk (an injected write error)
@pytest.mark.parametrize("with_errno", [True, False])
def test_full_disk_during_overwrite_keeps_the_old_dataset(small_tree, other_tree, tmp_path, monkeypatch, with_errno):
    out = tmp_path / "data"
    build_dataset(small_tree, out, progress=False)
    before = _rows(out)

    def full_disk(*args, **kwargs):
        if with_errno:
            raise OSError(errno.ENOSPC, "No space left on device", str(out) + "/train/data-00000-of-00001.arrow")
        raise OSError("unexpected end of stream")  # what arrow / torch's zip writer say, without an errno

    monkeypatch.setattr(dataset_module, "_save_preprocessor", full_disk)
    if not with_errno:  # the free space is what names the cause then
        monkeypatch.setattr(dataset_module, "free_bytes", lambda path: 0)
        monkeypatch.setattr("mmae_hf.traffic.atomic.free_bytes", lambda path: 0)
    with pytest.raises(
        OutputWriteError,
        match=r"the dataset could not be written: ENOSPC \(no space left on "
        r"device\).*the output folder is unchanged",
    ):
        build_dataset(other_tree, out, progress=False, overwrite=True)
    assert _rows(out) == before and _siblings(out) == []


def test_full_disk_is_one_line_from_the_cli(small_tree, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_script_enospc", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dataset_module, "_save_preprocessor", full_disk)
    out = tmp_path / "cli"
    assert script.main(["--input", str(small_tree), "--output", str(out), "--no-progress"]) == 2
    err = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if line.strip() and "Saving the dataset" not in line
    ]
    assert len(err) == 1 and err[0].startswith(
        f"build_dataset.py: error: {out}: the dataset could not be written: ENOSPC (no space left on device)"
    )
    assert not out.exists() and _siblings(out) == []


def test_overwrite_never_replaces_a_folder_that_is_not_a_dataset(small_tree, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a dataset folder"):
        build_dataset(small_tree, precious, progress=False, overwrite=True)
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"] and _siblings(precious) == []


# ---------------------------------------------------------------- the loader checks report against splits
def test_loader_refuses_a_folder_whose_report_and_splits_disagree(small_tree, tmp_path):
    from mmae_hf.training.data import DatasetLoadError, load_pretraining_split
    from mmae_hf.training.finetuning import load_traffic_dataset as load_for_finetuning

    out = tmp_path / "data"
    build_dataset(small_tree, out, progress=False, split_by="flow")
    report_path = out / "build_report.json"
    report = json.loads(report_path.read_text())
    report["split"]["rows_per_split"]["train"] += 1000  # what an interrupted rewrite of an older version left
    report_path.write_text(json.dumps(report))
    message = r"the saved splits do not match build_report.json \(train: \d+ rows \(report: \d+\)\)"
    with pytest.raises(ValueError, match=message):
        load_traffic_dataset(out)
    with pytest.raises(ValueError, match=message):
        load_for_finetuning(str(out))
    with pytest.raises(DatasetLoadError, match=message):
        load_pretraining_split(str(out))


# ---------------------------------------------------------------- inputs that are not regular files
def test_fifos_in_the_input_are_skipped_and_counted(small_tree, tmp_path):
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(small_tree, root)
    os.mkfifo(root / "chat" / "trap.pcap")
    with deadline(120):  # the old builder opened the FIFO and waited forever
        result = build_dataset(root, None, progress=False)
    assert result.report["input"]["special_files_skipped"] == [{"file": "chat/trap.pcap", "kind": "FIFO"}]
    assert result.report["input"]["files"] == 6
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,label\nchat/cap00.pcap,chat\nchat/trap.pcap,chat\nweb/cap00.pcap,web\n")
    with deadline(120):
        result = build_dataset(root, None, manifest=manifest, progress=False, split_by="flow")
    assert result.report["input"]["special_files_skipped"] == [{"file": "chat/trap.pcap", "kind": "FIFO"}]
    assert result.report["input"]["files"] == 2


# ---------------------------------------------------------------- worker processes
def test_num_proc_is_checked_and_capped(small_tree, tmp_path):
    for bad in (0, -5):
        with pytest.raises(ValueError, match="num_proc must be an integer >= 1"):
            build_dataset(small_tree, None, progress=False, num_proc=bad)
    result = build_dataset(small_tree, None, progress=False, num_proc=64)  # 6 captures
    assert result.report["input"]["num_proc"] == min(6, len(os.sched_getaffinity(0)))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(small_tree), "--output", str(tmp_path / "o"), "--num-proc", "-5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--num-proc must be >= 1 (got -5)" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_license_that_is_no_hub_id_is_refused_before_any_capture_is_read(small_tree, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--input",
            str(small_tree),
            "--output",
            str(tmp_path / "o"),
            "--license",
            "CC BY 4.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--license 'CC BY 4.0': give a Hub license id" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- nothing readable
def test_only_unreadable_captures_are_listed(tmp_path):
    for name in ("chat/broken.pcap", "web/garbage.pcap"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"this is not a capture at all")
    with pytest.raises(ValueError) as caught:
        build_dataset(tmp_path, tmp_path.parent / "never", progress=False)
    message = str(caught.value)
    assert "2 capture(s) could not be read" in message
    assert "chat/broken.pcap: not a pcap or pcapng file" in message and "web/garbage.pcap" in message
    assert not (tmp_path.parent / "never").exists()


# ---------------------------------------------------------------- the options object
def test_options_object_and_keywords_build_the_same(small_tree):
    by_keywords = build_dataset(small_tree, None, progress=False, split_by="flow", seed=3)
    options = BuildOptions(progress=False, split_by="flow", seed=3)
    by_object = build_dataset(small_tree, None, options)
    overridden = build_dataset(small_tree, None, options, seed=4)
    train = {
        name: sorted(map(bytes, result.dataset["train"]["input_bytes"]))
        for name, result in (("keywords", by_keywords), ("object", by_object), ("overridden", overridden))
    }
    assert train["object"] == train["keywords"] != train["overridden"]  # keywords override the object's fields
    with pytest.raises(TypeError):
        build_dataset(small_tree, None, no_such_option=1)
