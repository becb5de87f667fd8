"""Test-suite plumbing: the optional development data in ``../shared`` and where pytest's temp files go.

The extra data. Tests marked ``@pytest.mark.shared_data`` read the full nDPI development set, NetMamba's own
golden arrays or the official checkpoint key table from ``../shared`` (beside the clone), or from the folder named
by ``$MMAE_SHARED_DIR``. Where that folder is absent they are skipped, all with the one reason `SKIP_REASON`;
with ``MMAE_REQUIRE_SHARED=1`` (set by ``.ci/run``) its absence is an error instead. Every behaviour those tests
check is also checked on data the repository ships (``examples/sample_traffic``, ``tests/data``), so a fresh
clone tests everything. A test reaches the folder through the ``shared_dir`` fixture, which only marked tests may use.

Temp files. pytest's temp folders (``tmp_path``) and every ``tempfile`` of the test processes and of the
programs they start live in ``.pytest_tmp/`` inside the clone (gitignored), not in the system temp folder.
"""

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "MMAE_SHARED_DIR"
REQUIRE_ENV = "MMAE_REQUIRE_SHARED"
MARKER = "shared_data"
SKIP_REASON = f"needs the development data in ../shared or ${SHARED_ENV} (absent here); see README 'Extra test data'"
TEMP_ROOT = REPO / ".pytest_tmp"


def shared_root() -> Path:
    """Where the development data is looked for: ``$MMAE_SHARED_DIR``, else ``../shared`` beside the clone."""
    configured = os.environ.get(SHARED_ENV)
    return Path(configured) if configured else (REPO.parent / "shared")


def shared_available() -> bool:
    root = shared_root()
    return (root / "data").is_dir() and (root / "reference").is_dir()


def pytest_configure(config):
    TEMP_ROOT.mkdir(exist_ok=True)
    # tmp_path and tempfile.* (here and in child processes) under the clone
    os.environ["TMPDIR"] = str(TEMP_ROOT)
    tempfile.tempdir = None  # forget the cached system temp folder; the next call reads TMPDIR
    if os.environ.get(REQUIRE_ENV) == "1" and not shared_available():
        raise pytest.UsageError(
            f"{REQUIRE_ENV}=1 but the development data is missing: {shared_root()} needs data/ and reference/ "
            f"(put the shared folder beside the clone, or set {SHARED_ENV})"
        )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()) and item.get_closest_marker(MARKER) is None:
            raise pytest.UsageError(f"{item.nodeid} uses the shared_dir fixture without @pytest.mark.{MARKER}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # skipped here, before any fixture is set up, so that the summary shows one line for all of them
    if item.get_closest_marker(MARKER) is not None and not shared_available():
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The development data folder (only for tests marked ``shared_data``; they are skipped when it is absent)."""
    return shared_root()
