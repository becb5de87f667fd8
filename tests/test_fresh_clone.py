"""A fresh clone, without ../shared beside it, collects every test and passes the fast ones.

The clone is a copy of what ``git clone`` would give plus local edits: the tracked and the untracked-but-not-ignored
files of this working tree, in a temp folder that has no ``shared`` folder beside it. It reuses this venv's
Python with ``PYTHONPATH`` pointing at the clone (no reinstall), so the clone's own ``mmae_hf`` is tested.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# modules whose tests used to need ../shared, and that now also test the committed data (fast ones)
FAST_MODULES = [
    "tests/test_traffic_netmamba.py",
    "tests/test_traffic_flows.py",
    "tests/test_convert.py",
    "tests/test_feature_extraction.py",
]


def working_tree_files() -> list[str]:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no tracked-file list to clone from")
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return [name for name in listed if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    target = root / "mmae-hf"
    for name in working_tree_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    assert not (root / "shared").exists()
    return target


def run_in(clone: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MMAE_SHARED_DIR", "MMAE_REQUIRE_SHARED", "PYTEST_ADDOPTS", "TMPDIR")
    }
    env["PYTHONPATH"] = str(clone)
    return subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_clone_imports_its_own_package(clone):
    result = run_in(clone, "-c", "import mmae_hf; print(mmae_hf.__file__)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).resolve() == (clone / "mmae_hf" / "__init__.py").resolve()


def test_collection_and_fast_tests_pass_without_shared(clone):
    collected = run_in(clone, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    summary = collected.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), summary  # no collection errors
    assert int(summary.split()[0]) > 250

    result = run_in(clone, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *FAST_MODULES)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", out).group(1))
    skipped = int(re.search(r"(\d+) skipped", out).group(1))
    assert passed >= 20 and skipped >= 5
    # every shared_data test is skipped for the same, single reason (one summary line)
    skip_lines = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1 and "needs the development data in ../shared" in skip_lines[0], skip_lines
    # and temp files stayed inside the clone
    assert (clone / ".pytest_tmp").is_dir()


def test_a_non_editable_install_carries_what_it_needs(clone, tmp_path):
    """`pip install .` from a clone (the README's install line): the installed package, not the clone, renders
    the model cards (their templates ship inside the package)."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(clone),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(wheels.glob("mmae_hf-*.whl"))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    script = (
        "import mmae_hf, json, pathlib\n"
        "from mmae_hf.model_card import DEFAULT_TEMPLATE, PRETRAINING_TEMPLATE\n"
        "print(pathlib.Path(mmae_hf.__file__).parent)\n"
        "print(DEFAULT_TEMPLATE.is_file() and PRETRAINING_TEMPLATE.is_file())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MMAE_SHARED_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    package_dir, templates_found = done.stdout.strip().splitlines()[-2:]
    assert Path(package_dir).resolve() == (site / "mmae_hf").resolve() and templates_found == "True"
