"""Listing a folder so that every entry is accounted for.

``walk`` goes through a folder recursively, in a stable order (names sorted within each folder,
depth first), and returns one ``Entry`` for everything it meets that is not a folder it could
descend into: regular files to read, and — instead of letting them vanish — entries that cannot be
read, each with the reason: broken symbolic links, link loops, FIFOs, sockets and devices, folders
that cannot be listed, paths too long for the operating system.  Hidden entries (names starting
with '.') and links to a folder already listed are skipped, with the reason.

Names are kept exactly as the operating system gives them: a name that is not valid UTF-8 stays a
``str`` with surrogate escapes (``os.fsdecode``), so it can be opened again and stored losslessly;
``display_name`` shows it escaped.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .images import _os_reason, file_kind

HIDDEN = "hidden (name starts with '.')"
LINKED_FOLDER = "link to a folder already listed"
ALREADY_RECORDED = "already recorded by the run being resumed"


@dataclass(frozen=True)
class Entry:
    path: str                   # as the OS gives it (undecodable bytes kept as surrogate escapes)
    error: str | None = None    # why it cannot be read, found while listing
    skip: str | None = None     # why it is deliberately left out

    @property
    def readable(self) -> bool:
        return self.error is None and self.skip is None


def display_name(path: str) -> str:
    """A path for people: bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _stat_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            return f"broken symbolic link (points to {display_name(os.readlink(path))}, which does not exist)"
        except OSError:
            return "broken symbolic link"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return _os_reason(exc)


def _list(folder: str, entries: list[Entry]) -> list[str] | None:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it)
    except OSError as exc:
        entries.append(Entry(folder, error=f"cannot list folder: {_os_reason(exc)}"))
        return None


def walk(root: str | Path) -> list[Entry]:
    """Every entry below ``root`` (a folder), in a stable order; see the module's docstring.

    Pre-order by name, like sorting the full paths: a subfolder's entries come where its name does.
    An explicit stack instead of recursion: a hostile tree may be nested thousands deep.
    """
    root_text = os.fspath(root)
    entries: list[Entry] = []
    root_stat = os.stat(root_text)
    listed: dict[tuple[int, int], str] = {(root_stat.st_dev, root_stat.st_ino): root_text}
    names = _list(root_text, entries)
    stack = [] if names is None else [(root_text, iter(names))]
    while stack:
        folder, names_left = stack[-1]
        name = next(names_left, None)
        if name is None:
            stack.pop()
            continue
        path = os.path.join(folder, name)
        if name.startswith("."):
            entries.append(Entry(path, skip=HIDDEN))
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            entries.append(Entry(path, error=_stat_error(path, exc)))
            continue
        if stat.S_ISREG(st.st_mode):
            entries.append(Entry(path))
        elif not stat.S_ISDIR(st.st_mode):
            entries.append(Entry(path, error=f"not a regular file: {file_kind(st.st_mode)}"))
        elif (st.st_dev, st.st_ino) in listed:
            first = listed[(st.st_dev, st.st_ino)]
            if any(first == ancestor for ancestor, _ in stack):
                entries.append(Entry(path, error=f"symbolic link loop (back to {display_name(first)})"))
            else:
                entries.append(Entry(path, skip=LINKED_FOLDER))
        else:
            listed[(st.st_dev, st.st_ino)] = path
            sub = _list(path, entries)
            if sub is not None:
                stack.append((path, iter(sub)))
    return entries
