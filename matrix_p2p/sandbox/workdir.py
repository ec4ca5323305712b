"""The per-slot work directories on the host: create, wipe, and write a caller's files safely.

Layout: ``<root>/<slot>/`` (mode 0700, owned by the slot's uid when the
server runs as root) is bound at ``/work`` inside the sandbox. ``root``
itself is 0711 so a slot uid can reach its own directory and list none.

The server writes request files into a directory that sandboxed code also
writes to, so a sandbox could plant a symlink (``out -> /etc/shadow``) or a
hard link there. Every component is therefore opened relative to a
directory fd with ``O_NOFOLLOW``, and a file with more than one link is
refused, so a write never lands outside the work dir.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

from matrix_p2p.sandbox.errors import BadRequest

MAX_FILE_BYTES = 16 << 20  # per request, all files together
WORK_PREFIX = "/work/"  # callers may name files as the sandbox sees them


class Owner:
    """Who owns a slot's files on the host: ``uid``/``gid`` None = the server's own."""

    __slots__ = ("gid", "uid")

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = uid
        self.gid = gid


def make_root(parent: str | None = None) -> str:
    """A fresh directory holding every slot's work dir."""
    root = tempfile.mkdtemp(prefix="matrix-p2p-sandbox-", dir=parent)
    os.chmod(root, 0o711)
    return root


def slot_dir(root: str, slot: int) -> str:
    return os.path.join(root, str(slot))


def _force_writable(func: Callable[..., Any], path: str, exc: BaseException) -> None:
    # A sandbox may leave a 0500 directory behind; an unprivileged server
    # (same uid) must chmod it before it can delete what is inside.
    if isinstance(exc, PermissionError):
        parent = os.path.dirname(path)
        os.chmod(parent, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)
        return
    if isinstance(exc, FileNotFoundError):
        return
    raise exc


def wipe(path: str) -> None:
    """Remove ``path`` and everything in it (symlinks removed, never followed)."""
    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_force_writable)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: _force_writable(func, p, info[1]))


def prepare(path: str, owner: Owner) -> None:
    """Wipe and recreate a slot's work dir, empty, owned by the slot's uid."""
    wipe(path)
    os.mkdir(path, 0o700)
    if owner.uid is not None:
        os.chown(path, owner.uid, owner.gid if owner.gid is not None else owner.uid)


def check_relative(name: str, field: str = "files") -> tuple[str, ...]:
    """The components of a caller's relative file name; 400 for absolute or ``..`` paths."""
    if not name or "\x00" in name:
        raise BadRequest(field, f"{field}: empty file name or NUL byte in {name!r}")
    if name.startswith(WORK_PREFIX):
        name = name[len(WORK_PREFIX):]
    parts = PurePosixPath(name).parts
    if name.startswith("/") or any(p in ("..", "") for p in parts):
        raise BadRequest(field, f"{field}: {name!r} must be a relative path inside the work dir")
    return tuple(p for p in parts if p != ".")


def check_files(files: Mapping[str, str], field: str = "files") -> dict[tuple[str, ...], bytes]:
    """Validate a request's ``files`` before anything is written."""
    out: dict[tuple[str, ...], bytes] = {}
    total = 0
    for name, text in files.items():
        parts = check_relative(name, field)
        if not parts:
            raise BadRequest(field, f"{field}: {name!r} names the work dir itself")
        data = text.encode()
        total += len(data)
        out[parts] = data
    if total > MAX_FILE_BYTES:
        raise BadRequest(field, f"{field}: {total} bytes in all, the limit is {MAX_FILE_BYTES}")
    return out


def write_files(work_dir: str, files: Mapping[tuple[str, ...], bytes], owner: Owner) -> None:
    """Write each file under ``work_dir`` without following any link the sandbox made.

    Raises ``BadRequest`` when a path runs into a symlink, a non-directory
    or a hard-linked file (the sandbox's doing); ``OSError`` otherwise.
    """
    for parts, data in files.items():
        _write_one(work_dir, parts, data, owner)


def _chown(fd: int, owner: Owner) -> None:
    if owner.uid is not None:
        os.fchown(fd, owner.uid, owner.gid if owner.gid is not None else owner.uid)


def _write_one(work_dir: str, parts: tuple[str, ...], data: bytes, owner: Owner) -> None:
    name = "/".join(parts)
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds = [os.open(work_dir, dir_flags)]
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fds[-1])
                created = True
            except FileExistsError:
                created = False
            try:
                fds.append(os.open(part, dir_flags, dir_fd=fds[-1]))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise BadRequest("files", f"files: {name!r}: {part!r} is not a directory") from None
                raise
            if created:
                _chown(fds[-1], owner)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=fds[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise BadRequest("files", f"files: {name!r} is a link, directory or device") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                raise BadRequest("files", f"files: {name!r} is not a plain, singly linked file")
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            _chown(fd, owner)
        finally:
            os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)
