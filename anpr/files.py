"""Every file anpr writes or trusts is made and opened here, by one rule.

What anpr writes holds plates or what protects them (export files, the JSON status log,
the audit checkpoints, reports, a SQLite database it creates, the batch files of its
spool and queues), and what it trusts decides what a plate hashes to (the key file).
For each:

- No symbolic link is followed (O_NOFOLLOW): a link planted where anpr writes would send
  its lines to the link's target, which keeps its own mode and owner.
- A file anpr makes is created with mode 0600 whatever the umask, and never in place of
  an existing one by accident (`create`).
- An existing file is used only if it is a regular file, owned by the user anpr runs as,
  and neither readable nor writable by any other (REFUSALS, checked on the open
  descriptor, so the file checked is the file used). Whoever else owns a file or can
  read it would get what anpr writes there, and whoever can write it could plant what
  anpr trusts. A file that fails is refused (UnsafeFile, an OSError whose strerror says
  why) and left untouched.
- What is written is written whole: os.write may write less than asked (a full disk, a
  file size limit), so the rest is written or its error raised (`write_whole`); an
  append that cannot be written whole is taken back, so that a file of lines never ends
  in half a line, and a line appended after one cut short (by a crash) starts a line of
  its own (`append`).
- A file is replaced atomically, through a 0600 temporary file renamed into place, and
  what it held is zeroed (`write_private`, `shred`; best effort: a journaling file
  system or an SSD may keep old blocks).

The `_at` functions work relative to a folder's descriptor: the outbox folders use them
(anpr/storage/outbox.py), the folder being their unit of trust.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PRIVATE_MODE = 0o600
# O_NONBLOCK: a FIFO in a file's place must not hang the run (it is then refused as not a
# regular file); on a regular file it changes nothing.
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

StrPath = str | os.PathLike[str]


class UnsafeFile(OSError):
    """A file anpr will not use, left as it is: `reason` completes "<the file> ..."."""

    def __init__(self, path: StrPath, reason: str) -> None:
        super().__init__(errno.EPERM, f"it {reason}", os.fspath(path))
        self.reason = reason


@dataclass(frozen=True)
class Refusal:
    """A reason to refuse an existing file, judged on its status."""

    refuses: Callable[[os.stat_result], bool]
    reason: Callable[[os.stat_result, str], str]


NOT_REGULAR = Refusal(lambda info: not stat.S_ISREG(info.st_mode), lambda info, path: "is not a regular file")
OTHER_OWNER = Refusal(
    lambda info: info.st_uid != os.geteuid(),
    lambda info, path: (
        f"belongs to another user ({_user(info.st_uid)}), who could read or replace it: "
        f"anpr uses only files of its own user ({_user(os.geteuid())})"
    ),
)
OPEN_TO_OTHERS = Refusal(
    lambda info: bool(info.st_mode & 0o077),
    lambda info, path: (
        f"can be read by other users or changed by them (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
    ),
)
REFUSALS = (NOT_REGULAR, OTHER_OWNER, OPEN_TO_OTHERS)


@dataclass(frozen=True)
class _Use:
    flags: int
    refusals: tuple[Refusal, ...]


Use = Literal["read", "append", "new", "existing", "rewrite"]
USES: dict[str, _Use] = {
    "read": _Use(os.O_RDONLY, REFUSALS),  # a file anpr trusts (the key file)
    # A file of lines (an export, the status log, the checkpoints); read too, to see how its last line ends.
    "append": _Use(os.O_RDWR | os.O_CREAT | os.O_APPEND, REFUSALS),
    "new": _Use(os.O_WRONLY | os.O_CREAT | os.O_EXCL, REFUSALS),  # FileExistsError when there is one
    "existing": _Use(os.O_RDWR | os.O_APPEND, REFUSALS),  # checked before a run writes to it (`check_existing`)
    # A file about to be replaced by a private copy (an export's purge): refusing one that is
    # too open would leave expired plates in it, in the open.
    "rewrite": _Use(os.O_RDWR, (NOT_REGULAR,)),
}


def open_file(path: StrPath, use: Use, *, dir_fd: int | None = None) -> int:
    """`path` opened for `use` (USES), once it passes that use's refusals: UnsafeFile when it
    does not, OSError when it cannot be opened."""
    how = USES[use]
    try:
        fd = os.open(path, how.flags | OPEN_FLAGS, PRIVATE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        # O_NOFOLLOW fails with ELOOP on a link; a FIFO without a reader or a socket, with ENXIO.
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise _unsafe(path, dir_fd) or exc from None
        raise
    try:
        check(fd, path, how.refusals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_existing(path: StrPath) -> None:
    """Raise what appending to `path` would raise, if there is a file there (a run checks
    its files before its first frame, and makes none it may never need)."""
    with contextlib.suppress(FileNotFoundError):
        os.close(open_file(path, "existing"))


def check(fd: int, path: StrPath, refusals: tuple[Refusal, ...] = REFUSALS) -> None:
    """Raise UnsafeFile if the open file `fd` (named `path`) meets one of `refusals`."""
    info = os.fstat(fd)
    for refusal in refusals:
        if refusal.refuses(info):
            raise UnsafeFile(path, refusal.reason(info, os.fspath(path)))


def _unsafe(path: StrPath, dir_fd: int | None) -> UnsafeFile | None:
    """Why an open failed, when it failed on what stands at `path` (a link, a FIFO...)."""
    info = lstat_at(dir_fd, path)
    if info is None or stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
        return None
    if stat.S_ISLNK(info.st_mode):
        return UnsafeFile(path, "is a symbolic link, which anpr does not follow: give the file itself")
    return UnsafeFile(path, NOT_REGULAR.reason(info, os.fspath(path)))


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def read_private(path: StrPath) -> bytes:
    """The content of a file anpr trusts, once it passes REFUSALS."""
    with os.fdopen(open_file(path, "read"), "rb") as file:
        return file.read()


def create(path: StrPath, data: bytes = b"") -> bool:
    """Make `path` a new private file holding `data`, synced; False, with nothing done, when
    something is already there. The file appears whole or not at all (written under a
    temporary name, then linked into place), so a concurrent reader never sees it half written."""
    path = Path(path)
    if os.path.lexists(path):  # (a folder that cannot be written may hold one)
        return False
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = open_file(temp, "new")
    try:
        try:
            write_whole(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: made in place instead
            return _create_in_place(path, data)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    with parent_folder(path) as dir_fd:
        fsync_quietly(dir_fd)
    return True


def _create_in_place(path: Path, data: bytes) -> bool:
    try:
        fd = open_file(path, "new")
    except FileExistsError:
        return False
    try:
        write_whole(fd, data)
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)
    return True


def write_whole(fd: int, data: bytes) -> None:
    """Write all of `data`, or raise: a short write is followed by the rest."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # no error and no progress: it would loop for ever
            raise OSError(errno.EIO, f"the file took {len(data) - len(view)} of {len(data)} bytes")
        view = view[written:]


def append(path: StrPath, data: bytes) -> None:
    """Append `data`, whole lines, to the private file `path` (made 0600 if new), synced;
    under the file's lock, so that another anpr appending waits its turn (`append_whole`)."""
    fd = open_file(path, "append")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        append_whole(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def append_whole(fd: int, data: bytes) -> None:
    """Append whole lines to the file `fd` (opened for "append", its lock held): after a last
    line cut short they start a line of their own; if they cannot be written whole, what
    was written of them is taken back and the error raised."""
    end = os.fstat(fd).st_size
    if end and os.pread(fd, 1, end - 1) != b"\n":
        data = b"\n" + data
    try:
        write_whole(fd, data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise


# --- replacing and deleting, in a folder reached by its descriptor or by a path -----------------


def temp_name(path: Path) -> Path:
    """Where `write_private` writes `path`'s next content before renaming it into place."""
    return path.with_name(f".{path.name}.tmp")


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, through a 0600 temporary file (`replace_at`)."""
    with parent_folder(path) as dir_fd:
        replace_at(dir_fd, path.name, data)


def shred(path: Path) -> None:
    """Zero a file, never through a symbolic link, then delete it (best effort)."""
    with parent_folder(path) as dir_fd:
        shred_at(dir_fd, path.name)


@contextlib.contextmanager
def parent_folder(path: Path) -> Iterator[int]:
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def read_at(dir_fd: int, name: str) -> bytes:
    """A regular file's content, never through a link."""
    fd = os.open(name, os.O_RDONLY | OPEN_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return file.read()


def replace_at(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` (new, or in place of the old one) through a 0600 temporary file, fsynced."""
    temp = f".{name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, PRIVATE_MODE, dir_fd=dir_fd)
    try:
        try:
            write_whole(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        install_at(dir_fd, temp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def install_at(dir_fd: int, temp: str, name: str) -> None:
    """Rename a complete temporary file to `name`, then zero what `name` held: after the
    rename, so that a crash in between loses neither."""
    old = None
    if is_file_at(dir_fd, name):
        with contextlib.suppress(OSError):  # one that cannot be written is replaced all the same
            old = os.open(name, os.O_WRONLY | OPEN_FLAGS, dir_fd=dir_fd)
    elif lstat_at(dir_fd, name) is not None:
        raise OSError(errno.EEXIST, "its name is taken by something else")
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if old is not None:
            zero(old)
    finally:
        if old is not None:
            os.close(old)
    fsync_quietly(dir_fd)


def shred_at(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(name, os.O_WRONLY | OPEN_FLAGS, dir_fd=dir_fd)
        try:
            zero(fd)
        finally:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
    fsync_quietly(dir_fd)


def zero(fd: int) -> None:
    """Overwrite a regular file's content with zeros, in place (best effort)."""
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            os.lseek(fd, 0, os.SEEK_SET)
            size = info.st_size
            while size > 0:
                written = os.write(fd, b"\0" * min(size, 1 << 16))
                if written <= 0:
                    break
                size -= written
            os.fsync(fd)


def fsync_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


def lstat_at(dir_fd: int | None, name: StrPath) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_file_at(dir_fd: int | None, name: StrPath) -> bool:
    info = lstat_at(dir_fd, name)
    return info is not None and stat.S_ISREG(info.st_mode)
