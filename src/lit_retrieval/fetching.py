"""Downloading and unpacking files over HTTP, safely: the one place this project fetches anything from the network.

:func:`download` fetches a URL into a file so that an interrupted transfer resumes where it stopped (the bytes
received so far live in ``.<name>.part`` next to the destination and a rerun asks the server for the rest), the
content is verified (sha256 or md5 when known, else the expected size, and at least the size the server announced),
and the destination appears only once it is complete and verified (``os.replace``): Ctrl-C, a dropped connection or
a corrupt file never leave a half-written destination behind. :func:`extract` unpacks a ``.tar`` / ``.tar.gz`` /
``.tgz`` archive the same way: into a temporary folder next to the target, refusing absolute paths and ``..``, then
moved into place. Every failure is a :class:`DownloadError` saying what went wrong, where, and how to fix it.

Example::

    path = download("https://example.org/images.tgz", Path("data/.download/images.tgz"), size=1024)
    extract(path, Path("data/images"), expect="*.jpg", flatten=True)
"""
from __future__ import annotations

import fnmatch
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import Request, urlopen

from .atomic import make_temp_dir

__all__ = ["DownloadError", "download", "extract", "file_digest", "part_path", "rebase", "run_command", "url_filename"]

_USER_AGENT = "lit-retrieval-download"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-fA-F]+")
_RESUME = "the partial file is kept: rerun the same command to resume the download"


class DownloadError(RuntimeError):
    """A download or an extraction failed: ``what`` went wrong, ``where`` (a file, a folder or a URL), ``fix``.

    The message reads ``"<what> (<where>). Fix: <fix>"``; a single argument is used verbatim.
    """

    def __init__(self, what: str, where: str | os.PathLike[str] | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = None if where is None else os.fspath(where)
        self.fix = fix
        message = what if self.where is None else f"{what} ({self.where})"
        super().__init__(message if fix is None else f"{message}. Fix: {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.where, self.fix))


def url_filename(url: str) -> str:
    """The last path component of ``url`` (``https://host/a/b.tgz`` -> ``b.tgz``)."""
    return PurePosixPath(urlsplit(url).path).name


def rebase(url: str, base: str | None) -> str:
    """``url`` with its scheme and host replaced by ``base`` (whose own path, if any, is put in front of the URL's
    path): ``rebase("https://host/x/y.tgz", "http://127.0.0.1:8000/mirror")`` is
    ``http://127.0.0.1:8000/mirror/x/y.tgz``. ``base=None`` returns ``url`` unchanged."""
    if not base:
        return url
    b, u = urlsplit(base), urlsplit(url)
    if not b.scheme or not b.netloc:
        raise DownloadError(f"base URL {base!r} has no scheme or host", None,
                            "give it as http://HOST[:PORT][/PATH], e.g. http://127.0.0.1:8000")
    return urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + u.path, u.query, ""))


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` accumulate while it downloads: ``.<name>.part`` in the same folder."""
    return dest.with_name(f".{dest.name}.part")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at ``path`` (``"sha256"``, ``"md5"``...)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _checked_hex(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError(f"{name} must be a hexadecimal digest (or a prefix of one), got {value!r}")
    return value.lower()


def verify_problem(path: Path, sha256: str | None = None, md5: str | None = None,
                   size: int | None = None) -> str | None:
    """What is wrong with the file at ``path`` (``"expected ... , got ..."``), or ``None`` when it matches every
    expectation given: its ``size`` in bytes, its ``sha256`` / ``md5`` digest (a prefix of the digest is enough,
    as in torchvision's file names)."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        return f"expected {size} bytes, got {got_size}"
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            got = file_digest(path, algorithm)
            if not got.startswith(expected):
                return f"expected {algorithm} {expected}, got {got}"
    return None


def download(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None, size: int | None = None,
             md5: str | None = None, progress: bool = True, timeout: float = 30.0, chunk: int = 1 << 20) -> Path:
    """Download ``url`` into ``dest`` resumably and verified; return ``dest``.

    Args:
        url: what to fetch (``http://`` or ``https://``).
        dest: the file to create; its folder is created if needed.
        sha256: expected hex sha256 of the content, or a prefix of it (torchvision puts 8 hex digits in its
            checkpoint names).
        size: expected size in bytes (checked before any digest; without it, the size the server announced).
        md5: expected hex md5 of the content (or a prefix).
        progress: show a tqdm progress bar.
        timeout: seconds without any data after which the connection is given up (the partial file is kept).
        chunk: bytes read at a time.

    A ``dest`` that exists already and matches ``sha256`` / ``md5`` / ``size`` is left alone ("already there"); one
    that does not is downloaded again (replaced only once the new copy verifies). While downloading, the bytes
    received are in :func:`part_path` ``(dest)``: a rerun after an interruption asks for the rest (``Range``) and
    appends it when the server answers 206, or starts over when it answers 200.

    Raises:
        DownloadError: HTTP error, unreachable host, stalled or dropped connection (the partial file is kept and a
            rerun resumes), content that does not verify (the partial file is deleted).
    """
    dest = Path(dest)
    sha256, md5 = _checked_hex(sha256, "sha256"), _checked_hex(md5, "md5")
    if dest.is_file():
        problem = verify_problem(dest, sha256, md5, size)
        if problem is None:
            print(f"{dest.name}: already there ({dest})")
            return dest
        print(f"{dest.name}: the file there does not verify ({problem}): downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    announced = _transfer(url, part, size, progress=progress, timeout=timeout, chunk=chunk)
    problem = verify_problem(part, sha256, md5, size if size is not None else announced)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest.name} downloaded from {url} is not the expected file: {problem}", dest,
                            "rerun the same command to download it again; if it fails the same way, the file at the "
                            "source changed or the address is wrong: check the URL (and the checksums given)")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, size: int | None, *, progress: bool, timeout: float, chunk: int) -> int | None:
    """Bring ``part`` to the full content of ``url`` (resuming what it holds); return the size the server
    announced (``None`` if it did not say)."""
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have == size:
        return size  # complete already (interrupted before the final rename): only verification is left
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and have:  # the range starts at or after the end: the .part may be whole already
            match = _UNSATISFIED_RANGE.search(err.headers.get("Content-Range") or "")
            if match and int(match[1]) == have:
                return have
            part.unlink()
            return _transfer(url, part, size, progress=progress, timeout=timeout, chunk=chunk)
        raise DownloadError(f"the server answered HTTP {err.code} {err.reason} for {url_filename(url)}", url,
                            "check the address (and --base-url if given); rerun the same command once the file "
                            "is available") from err
    except (URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {urlsplit(url).netloc} to download {url_filename(url)} ({reason})", url,
                            "check the network connection and the address (and --base-url if given), then rerun "
                            "the same command" + (f"; {_RESUME}" if have else "")) from err
    with response:
        start, total = _resume_point(response, have)
        if have and not start:
            print(f"{part.name}: the server does not resume downloads: starting from the beginning")
        _stream(response, part, (start, total), progress=progress, timeout=timeout, chunk=chunk)
    return total


def _resume_point(response: Any, have: int) -> tuple[int, int | None]:
    """Where the body of ``response`` starts in the file (``have`` for a matching 206, else 0) and the whole file's
    size the server announced (``None`` if unknown)."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = _CONTENT_RANGE.search(response.headers.get("Content-Range") or "")
        if match and int(match[1]) == have:
            return have, None if match[3] == "*" else int(match[3])
        raise DownloadError(f"the server resumed {url_filename(response.url)} at an unexpected place "
                            f"(Content-Range {response.headers.get('Content-Range')!r}, asked for bytes={have}-)",
                            response.url, "delete the partial file and rerun the same command")
    return 0, int(length) if length is not None and length.isdigit() else None


def _stream(response: Any, part: Path, span: tuple[int, int | None], *, progress: bool, timeout: float,
            chunk: int) -> None:
    """Write the body of ``response`` into ``part`` from byte ``start`` of ``span = (start, total)`` (appending, or
    truncating when 0); a stalled, dropped or short transfer raises a resumable ``DownloadError``."""
    from tqdm.auto import tqdm

    start, total = span
    received = start
    name = part.name.removeprefix(".").removesuffix(".part")
    with open(part, "ab" if start else "wb") as f, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress,
        leave=False,
    ) as bar:
        try:
            while block := _read(response, chunk, (received, total), part, timeout):
                f.write(block)
                received += len(block)
                bar.update(len(block))
        except OSError as err:  # the disk, not the network (read errors are DownloadErrors)
            raise DownloadError(f"cannot write {part.name} ({err})", part,
                                f"free disk space or fix the folder's permissions; {_RESUME}") from err
        finally:
            f.flush()
            os.fsync(f.fileno())
    if total is not None and received < total:
        raise DownloadError(f"the server closed the connection after {received} of {total} bytes", part, _RESUME)


def _read(response: Any, chunk: int, progress: tuple[int, int | None], part: Path, timeout: float) -> bytes:
    """The next block of ``response`` (``b""`` at its end); a stalled or broken connection raises a resumable
    ``DownloadError`` saying how far it got (``progress = (received, total)``)."""
    received, total = progress
    try:
        return response.read1(chunk)  # what has arrived (up to chunk): a stall loses nothing already received
    except TimeoutError as err:
        raise DownloadError(f"the connection stalled: no data for {timeout:g} s after {received} of {total or '?'} "
                            "bytes", part, _RESUME) from err
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"the connection broke after {received} of {total or '?'} bytes "
                            f"({type(err).__name__}: {err})", part, _RESUME) from err


def run_command(work: Callable[[], None], folder_option: str) -> int:
    """Run a download command's ``work``; return its exit status: 0 done, 1 failed (the error printed in one line,
    no traceback; ``folder_option`` names the option of the folder written to), 130 interrupted."""
    import sys

    try:
        work()
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the disk or the folders (network failures are DownloadErrors)
        print(f"error: {err}. Fix: check the folder ({folder_option}), its free space and permissions, then rerun",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


# ---------------------------------------------------------------- archives


def extract(archive: str | os.PathLike[str], into: str | os.PathLike[str], *, expect: str = "*",
            flatten: bool = False) -> int:
    """Unpack the tar archive ``archive`` (``.tar``, ``.tar.gz``, ``.tgz``) into the folder ``into``; return the
    number of files placed.

    Args:
        archive: the archive file.
        into: the target folder. Missing: the unpacked folder is renamed onto it in one step (it appears whole or
            not at all). Existing: the files are moved into it one by one, each with ``os.replace`` (an archive
            extracted again replaces its own files).
        expect: ``fnmatch`` pattern of file names the archive must hold at least one of (``"*.jpg"``), else it is
            not the expected archive.
        flatten: put every file directly in ``into`` under its own name, dropping the archive's folders (as
            revisitop lays out Oxford and Paris: ``paris/eiffel/x.jpg`` -> ``x.jpg``).

    Extraction uses tarfile's ``"data"`` filter: absolute paths, ``..``, links leaving the target and device files
    are refused. It runs in a temporary folder next to ``into``, removed in any case: a failure or Ctrl-C leaves
    nothing half-extracted in ``into``.

    Raises:
        DownloadError: unreadable or truncated archive, unsafe entry, no file matching ``expect``, two files of
            the same name with ``flatten``.
    """
    archive, into = Path(archive), Path(into)
    into.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{into.name}.extracting.", into.parent)
    refetch = ("if the error is about the disk (space, permissions), fix that and rerun the same command; else "
               "delete the archive and rerun to download it again (if that fails too, check its address)")
    try:
        raw = tmp / "raw"
        matched = _unpack(archive, raw, expect)
        if not matched:
            raise DownloadError(f"archive {archive.name} holds no file matching {expect!r}: not the expected archive",
                                archive, refetch)
        return _place(_flattened(raw, tmp / "flat", archive) if flatten else raw, into)
    except tarfile.FilterError as err:
        raise DownloadError(f"archive {archive.name} holds an unsafe entry, refused: {err}", archive,
                            "this is not the expected archive: check the address") from err
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DownloadError(f"cannot extract archive {archive.name} ({type(err).__name__}: {err})", archive,
                            refetch) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack(archive: Path, raw: Path, expect: str) -> int:
    """Extract ``archive`` into the new folder ``raw`` in one pass; return how many of its files match ``expect``."""
    raw.mkdir()
    matched = 0

    def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        nonlocal matched
        for member in tar:
            if member.isfile() and fnmatch.fnmatch(PurePosixPath(member.name).name, expect):
                matched += 1
            yield member

    with tarfile.open(archive) as tar:
        tar.extractall(raw, members=members(tar), filter="data")
    return matched


def _flattened(raw: Path, flat: Path, archive: Path) -> Path:
    """Every file under ``raw`` moved directly into the new folder ``flat`` (same names); returns ``flat``."""
    flat.mkdir()
    for path in sorted(raw.rglob("*")):
        if path.is_file() and not path.is_symlink():
            target = flat / path.name
            if target.exists():
                raise DownloadError(f"archive {archive.name} holds two files named {path.name!r} in different "
                                    f"folders ({path.relative_to(raw)}): they cannot be put side by side", archive,
                                    "check that it is the expected archive (its address)")
            os.replace(path, target)
    return flat


def _place(source: Path, into: Path) -> int:
    """Move the content of the folder ``source`` into ``into`` (a rename when ``into`` does not exist, else file by
    file); return the number of files moved."""
    files = [p for p in source.rglob("*") if not p.is_dir()]
    if not into.exists():
        os.replace(source, into)
        return len(files)
    for path in sorted(files):
        target = into / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return len(files)
