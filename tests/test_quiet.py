"""Quiet by default: progress bars only on a terminal, --no-progress silences every library's bars, temp files stay
inside the clone, and the test command does not reinstall when nothing changed."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mmae_hf.progress import progress_wanted, set_library_progress_bars

REPO = Path(__file__).resolve().parents[1]


class FakeStream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_bars_only_on_a_terminal_and_never_when_disabled():
    assert progress_wanted(stream=FakeStream(True)) is True
    assert progress_wanted(stream=FakeStream(False)) is False
    assert progress_wanted(disable=True, stream=FakeStream(True)) is False
    assert progress_wanted(stream=object()) is False  # no isatty at all (a log object)


def test_one_switch_for_datasets_transformers_and_hub_bars():
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    try:
        set_library_progress_bars(False)
        assert not datasets.is_progress_bar_enabled()
        assert are_progress_bars_disabled() and not hf_logging.is_progress_bar_enabled()
        set_library_progress_bars(True)
        assert datasets.is_progress_bar_enabled()
        assert not are_progress_bars_disabled() and hf_logging.is_progress_bar_enabled()
    finally:
        set_library_progress_bars(True)


def test_build_dataset_writes_no_bars_into_a_log(tmp_path, capfd):
    spec = importlib.util.spec_from_file_location("_build_quiet", REPO / "dataset_scripts" / "build_dataset.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    tree = tmp_path / "captures"
    for label in ("tls-chat", "udp-stream"):
        (tree / label).mkdir(parents=True)
        for index in ("00", "01", "02"):
            shutil.copy(REPO / "examples" / "sample_traffic" / label / f"{label}-{index}.pcap", tree / label)
    try:
        assert (
            build.main(
                [
                    "--input",
                    str(tree),
                    "--output",
                    str(tmp_path / "out"),
                    "--validation-size",
                    "0.34",
                    "--test-size",
                    "0.33",
                ]
            )
            == 0
        )  # no --no-progress: stderr is no terminal here
    finally:
        set_library_progress_bars(True)
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "it/s" not in out + err and "%|" not in out + err
    assert len((out + err).strip().splitlines()) <= 12  # the class table, one summary line, where it went


def test_pytest_temp_files_stay_inside_the_clone(tmp_path, request):
    if not request.config.option.basetemp:  # an explicit --basetemp wins, as it should
        assert (REPO / ".pytest_tmp").resolve() in tmp_path.resolve().parents
    assert Path(tempfile.gettempdir()).resolve() == (REPO / ".pytest_tmp").resolve()
    assert ".pytest_tmp/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="needs bash")
def test_setup_is_a_no_op_when_nothing_changed(tmp_path):
    """scripts/setup.sh in a copy whose .venv stamp matches: it must not run pip (it returns at once)."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", clone / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", clone / "pyproject.toml")
    (clone / "mmae_hf").mkdir()
    (clone / "mmae_hf" / "__init__.py").write_text("")
    venv_bin = clone / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"; export PYTHONPATH="{clone}"\n')
    stamp_input = subprocess.run(
        [
            "bash",
            "-c",
            f'{{ cat pyproject.toml scripts/setup.sh; "{venv_bin / "python"}" -VV; '
            'echo "torch==2.13.0"; } | sha256sum | cut -d" " -f1',
        ],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (clone / ".venv" / ".mmae-setup-stamp").write_text(stamp_input + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MMAE_TORCH_SPEC", "MMAE_FORCE_SETUP", "PYTHONPATH")}
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"mmae-hf already installed in {clone}/.venv (setup unchanged; MMAE_FORCE_SETUP=1 reinstalls)"
    )
    assert not (clone / ".venv" / "setup.log").exists()  # pip never ran
