"""Outputs that are complete or absent: staged folders renamed into place, atomic files, clear OS errors, signals.

A folder a program writes (a dataset, a fine-tuned model) is first written into a hidden sibling
``.<name>.mmae-staging-<pid>-<token>`` and renamed into place only when complete. An existing folder it replaces
(``--overwrite``) stays untouched until then; on Linux the two are swapped in one ``renameat2(RENAME_EXCHANGE)``
call, elsewhere by two renames. An exception, Ctrl-C or SIGTERM removes the staging folder; a folder left behind
by a killed process (SIGKILL, power loss) is removed by the next run once its process is gone.

Torch-free, standard library only.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import signal
import sys
from pathlib import Path

_STAGING = "mmae-staging"
_RETIRED = "mmae-retired"


# ----------------------------------------------------------------------------------------------- OS errors
class OutputWriteError(OSError):
    """An output could not be written (full disk, read-only file system, ...); the message says what and why.
    Nothing partial was left in place."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def describe_os_error(error: BaseException, path=None) -> str:
    """One line naming what went wrong in OS terms: ``ENOSPC (no space left on device) writing PATH``.

    Errors without an errno (arrow, torch's zip writer: "unexpected pos ...") are checked against the free space
    of ``path``'s file system: a full disk is named as such instead of the library's message alone."""
    code = getattr(error, "errno", None)
    where = f" writing {path}" if path is not None else ""
    if isinstance(code, int) and code in errno.errorcode:
        name = errno.errorcode[code]
        detail = getattr(error, "filename", None)
        target = f" ({detail})" if detail and str(detail) != str(path) else ""
        return f"{name} ({os.strerror(code).lower()}){where}{target}"
    free = free_bytes(path) if path is not None else None
    if free is not None and free < (1 << 20):
        return (
            f"ENOSPC (no space left on device){where}: {free} bytes free on that file system "
            f"({type(error).__name__}: {error})"
        )
    return f"{type(error).__name__}: {error}{where}"


def free_bytes(path) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent); None if unknown."""
    if path is None:
        return None
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------- files
def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``: readers see the old
    content or the new one, never a truncated file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


# ----------------------------------------------------------------------------------------------- folders
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(target) -> list:
    """Remove the staging / retired siblings of ``target`` left by processes that no longer run. Returns them."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:{_STAGING}|{_RETIRED})-(\d+)-[0-9a-f]+$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for sibling in target.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel / file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))


class StagedFolder:
    """Write a folder completely or not at all.

    Usage::

        with StagedFolder(output, overwrite=True) as staged:
            write_everything(staged.path)   # a fresh empty folder beside ``output``
            staged.commit()                 # ``output`` now holds it (the old content is removed)

    Leaving the block without ``commit`` (an exception, KeyboardInterrupt, SIGTERM turned into an exception)
    removes the staging folder and leaves ``output`` as it was.

    Args:
        target: the folder to produce.
        overwrite: replace ``target`` when it exists and is not empty (otherwise `FileExistsError`).
        ignore: names inside an existing ``target`` that do not make it "not empty" (e.g. stale work folders of an
            older version), removed at commit.
    """

    def __init__(self, target, *, overwrite: bool = False, ignore=()):
        self.target = Path(target)
        self.overwrite = overwrite
        self.ignore = tuple(ignore)
        self.root = None
        self.committed = False

    def existing_content(self) -> list:
        """What the target holds (without the ``ignore`` names); [] when it is absent or empty."""
        if not self.target.exists():
            return []
        if not self.target.is_dir():
            raise NotADirectoryError(f"{self.target}: exists and is not a folder")
        return [p for p in self.target.iterdir() if not any(p.match(pattern) for pattern in self.ignore)]

    def check(self) -> None:
        """Refuse a non-empty target without ``overwrite`` (call before any long work)."""
        if self.existing_content() and not self.overwrite:
            raise FileExistsError(f"{self.target}: output folder is not empty (pass overwrite=True / --overwrite)")

    def __enter__(self) -> "StagedFolder":
        self.check()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.target)
        self.root = self.target.parent / f".{self.target.name}.{_STAGING}-{os.getpid()}-{secrets.token_hex(4)}"
        self.root.mkdir()
        return self

    @property
    def path(self) -> Path:
        return self.root

    def commit(self) -> Path:
        """Put the staged folder in place of ``target`` (the previous content is removed afterwards)."""
        self.check()  # the target may have been filled meanwhile
        if self.target.exists():
            if _exchange(self.root, self.target):
                shutil.rmtree(self.root, ignore_errors=True)  # now holds the previous content
            else:
                retired = self.target.parent / f".{self.target.name}.{_RETIRED}-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(self.target, retired)
                try:
                    os.rename(self.root, self.target)
                except BaseException:
                    os.rename(retired, self.target)
                    raise
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(self.root, self.target)
        self.committed = True
        return self.target

    def __exit__(self, *exc) -> bool:
        if not self.committed and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        return False


# ----------------------------------------------------------------------------------------------- signals
class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised where the program was so that ``finally`` blocks clean up; ``exit_code`` is
    128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell convention."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_as_exceptions():
    """Inside the block SIGINT and SIGTERM raise `Interrupted` (SIGTERM's default would end the process
    without running any ``finally``). Only in the main thread; elsewhere a no-op."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_interruptible(main, prog: str, what: str = "nothing was written") -> int:
    """Run ``main()`` (returns an exit code) with SIGINT / SIGTERM turned into one line on stderr and exit code
    130 / 143 instead of a traceback."""
    try:
        with interrupts_as_exceptions():
            return main()
    except Interrupted as stop:
        print(f"{prog}: interrupted by {signal.Signals(stop.signum).name}; {what}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted by SIGINT; {what}", file=sys.stderr)
        return 130


__all__ = [
    "Interrupted",
    "OutputWriteError",
    "StagedFolder",
    "atomic_write_text",
    "describe_os_error",
    "free_bytes",
    "interrupts_as_exceptions",
    "remove_stale",
    "run_interruptible",
]
