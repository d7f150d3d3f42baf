"""Tests of the download commands (lit_retrieval.fetching, lit_retrieval.data.download, lit_retrieval.backbones.fetch)
against a local HTTP server that serves small fake archives and supports ``Range`` requests: full downloads read back
by the project's loaders, reruns that do nothing, corrupt and truncated files, resumed transfers, Ctrl-C."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_retrieval.backbones import BACKBONES
from lit_retrieval.backbones import fetch as weights_fetch
from lit_retrieval.backbones import weights as weights_module
from lit_retrieval.backbones.weights import WeightsNotFoundError, read_state_dict, resolve_imagenet_checkpoint
from lit_retrieval.data import load_dataset, write_revisited
from lit_retrieval.data import download as data_download
from lit_retrieval.fetching import DownloadError, download, extract, part_path, rebase

# the official file paths (the host is replaced by --base-url); written out here, not read from the table under test
OXFORD_TGZ = "/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
PARIS_TGZ = ("/~vgg/data/parisbuildings/paris_1-v1.tgz", "/~vgg/data/parisbuildings/paris_2-v1.tgz")
OXFORD_GND = "/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl"
PARIS_GND = "/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl"
R1M_TGZ = tuple(f"/revisitop/revisitop1m/jpg/revisitop1m.{i}.tar.gz" for i in (1, 2))
R1M_TXT = "/revisitop/revisitop1m/revisitop1m.txt"
ARCHIVE_DEST = ".download/oxbuild_images-v1.tgz"


# -- a local HTTP server -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FakeHost:
    """What the server serves (path -> bytes), what it was asked (path, Range header) and how it misbehaves."""

    url: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    drop_after: dict[str, int] = dataclasses.field(default_factory=dict)  # next request: drop after N bytes
    short: set[str] = dataclasses.field(default_factory=set)              # always one byte short of Content-Length
    stall: dict[str, int] = dataclasses.field(default_factory=dict)       # send N bytes, then go silent
    ignore_range: bool = False

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        host: FakeHost = self.server.host  # type: ignore[attr-defined]
        header = self.headers.get("Range")
        host.requests.append((self.path, header))
        body = host.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = None if host.ignore_range else header
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng else 0
        if rng and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in host.drop_after:
            payload = payload[: host.drop_after.pop(self.path)]
        elif self.path in host.short:
            payload = payload[:-1]
        elif self.path in host.stall:
            self.wfile.write(payload[: host.stall[self.path]])
            self.wfile.flush()
            time.sleep(1.0)
            return
        self.wfile.write(payload)


@pytest.fixture
def host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.host = FakeHost(f"http://127.0.0.1:{server.server_port}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.host  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


# -- fake datasets -----------------------------------------------------------------------------------------------------
def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 9), ((37 * i) % 256, (91 * i) % 256, (53 * i + 17) % 256)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tgz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclasses.dataclass
class Fakes:
    files: dict[str, bytes]            # served path -> bytes
    images: dict[str, dict[str, bytes]]  # dataset -> image path under jpg/ -> bytes


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> Fakes:
    tmp = tmp_path_factory.mktemp("fakes")
    counter = iter(range(1000))
    files: dict[str, bytes] = {}
    # roxford5k: one flat archive with 5 database images, 2 queries and one image the ground truth does not list
    ox_db = [f"all_souls_{i:06d}" for i in range(5)]
    ox_q = ["radcliffe_camera_000001", "bodleian_000002"]
    ox = {f"{n}.jpg": _jpeg(next(counter)) for n in ox_db + ox_q + ["unlisted_000001"]}
    files[OXFORD_TGZ] = _tgz(ox)
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3], "bbx": [1.0, 1.0, 9.0, 7.0]},
           {"easy": [4], "hard": [], "junk": [0]}]
    files[OXFORD_GND] = write_revisited(tmp, "roxford5k", ox_db, ox_q, gnd).read_bytes()
    # rparis6k: two archives nesting paris/<landmark>/<image>.jpg
    pa_names = {0: ["paris_defense_000001", "paris_eiffel_000002", "paris_eiffel_000003"],
                1: ["paris_louvre_000004", "paris_pantheon_000005"]}
    pa = {}
    for part, names in pa_names.items():
        entries = {f"paris/{n.split('_')[1]}/{n}.jpg": _jpeg(next(counter)) for n in names}
        files[PARIS_TGZ[part]] = _tgz(entries)
        pa.update({Path(k).name: v for k, v in entries.items()})
    pa_all = pa_names[0] + pa_names[1]
    files[PARIS_GND] = write_revisited(tmp, "rparis6k", pa_all[:4], pa_all[4:],
                                       [{"easy": [0, 3], "hard": [1], "junk": []}]).read_bytes()
    # revisitop1m: 2 archives keeping their folders, and the image list (one part with extensions, one without)
    r1m: dict[str, bytes] = {}
    lines = []
    for part, folder in enumerate(("a0", "b1")):
        entries = {f"{folder}/r1m_{part}{k}.jpg": _jpeg(next(counter)) for k in range(2)}
        files[R1M_TGZ[part]] = _tgz(entries)
        r1m.update(entries)
        lines += [name if part == 0 else name.removesuffix(".jpg") for name in entries]
    files[R1M_TXT] = ("\n".join(lines) + "\n").encode()
    return Fakes(files, {"roxford5k": ox, "rparis6k": pa, "revisitop1m": r1m})


def _main(host: FakeHost, root: Path, *args: str) -> int:
    return data_download.main([*args, "--root", str(root), "--base-url", host.url, "--no-progress"])


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- the dataset table -------------------------------------------------------------------------------------------------
def test_the_table_holds_revisitops_official_addresses():
    urls = {name: [a.url for a in spec.archives] + [spec.listing.url] for name, spec in data_download.DATASETS.items()}
    assert urls["roxford5k"] == ["https://www.robots.ox.ac.uk" + OXFORD_TGZ, "http://cmp.felk.cvut.cz" + OXFORD_GND]
    assert urls["rparis6k"] == ["https://www.robots.ox.ac.uk" + p for p in PARIS_TGZ] + [
        "http://cmp.felk.cvut.cz" + PARIS_GND]
    r1m = urls["revisitop1m"]
    assert len(r1m) == 101 and r1m[0] == "http://ptak.felk.cvut.cz" + R1M_TGZ[0]
    assert r1m[99].endswith("/revisitop1m.100.tar.gz") and r1m[-1] == "http://ptak.felk.cvut.cz" + R1M_TXT
    assert all(a.sha256 is None for spec in data_download.DATASETS.values() for a in spec.archives)  # none invented
    assert rebase("https://www.robots.ox.ac.uk/~vgg/x.tgz", "http://127.0.0.1:9/m/") == "http://127.0.0.1:9/m/~vgg/x.tgz"


# -- (a) full downloads read back, (b) reruns do nothing ---------------------------------------------------------------
def test_full_downloads_are_read_by_the_projects_loaders_and_a_rerun_does_nothing(host, fakes, tmp_path, capsys):
    host.files.update(fakes.files)
    root = tmp_path / "data"
    assert _main(host, root, "roxford5k", "rparis6k", "revisitop1m", "--limit-archives", "2") == 0

    ox = load_dataset({"kind": "revisited", "root": str(root), "name": "roxford5k"})
    assert (ox.n_db, len(ox.query_paths)) == (5, 2)
    assert [p.name for p in ox.db_paths] == [f"all_souls_{i:06d}.jpg" for i in range(5)]
    assert all(p.read_bytes() == fakes.images["roxford5k"][p.name] for p in ox.db_paths + ox.query_paths)
    assert ox.gnd[0]["easy"].tolist() == [0, 1] and ox.query_bbx[0] == (1.0, 1.0, 9.0, 7.0)
    assert _files(root / "roxford5k") == [".complete", "gnd_roxford5k.pkl"] + sorted(
        f"jpg/{n}" for n in fakes.images["roxford5k"])  # archive and .download/ gone, unlisted image kept

    pa = load_dataset({"kind": "revisited", "root": str(root), "name": "rparis6k"})
    assert (pa.n_db, len(pa.query_paths)) == (4, 1)
    assert sorted(p.name for p in (root / "rparis6k" / "jpg").iterdir()) == sorted(fakes.images["rparis6k"])  # flat
    assert all(p.read_bytes() == fakes.images["rparis6k"][p.name] for p in pa.db_paths + pa.query_paths)

    with_r1m = load_dataset({"kind": "revisited", "root": str(root), "name": "roxford5k",
                             "distractors": "revisitop1m"})
    distractors = with_r1m.db_paths[5:]
    assert with_r1m.n_db == 9 and with_r1m.distractors.count == 4
    assert [p.relative_to(root / "revisitop1m" / "jpg").as_posix() for p in distractors] == list(
        fakes.images["revisitop1m"])
    assert all(p.read_bytes() == fakes.images["revisitop1m"][p.relative_to(root / "revisitop1m" / "jpg").as_posix()]
               for p in distractors)
    assert json.loads((root / "revisitop1m" / ".complete").read_text())["archives"] == [
        "revisitop1m.1.tar.gz", "revisitop1m.2.tar.gz"]
    assert not any(p.endswith("revisitop1m.3.tar.gz") for p, _ in host.requests)  # --limit-archives 2
    assert all(r is None for _, r in host.requests)  # nothing to resume
    assert not list(root.glob("*/.download"))

    capsys.readouterr()
    host.requests.clear()
    assert _main(host, root, "roxford5k", "rparis6k", "revisitop1m", "--limit-archives", "2") == 0
    assert host.requests == []
    out = capsys.readouterr().out
    assert all(f"{name}: already there" in out for name in ("roxford5k", "rparis6k", "revisitop1m"))


def test_keep_archives_keeps_them_and_the_rerun_skips(host, fakes, tmp_path, capsys):
    host.files.update(fakes.files)
    root = tmp_path / "data"
    assert _main(host, root, "rparis6k", "--keep-archives") == 0
    downloads = root / "rparis6k" / ".download"
    assert (downloads / "paris_1-v1.tgz").read_bytes() == fakes.files[PARIS_TGZ[0]]
    assert (downloads / "paris_2-v1.tgz").read_bytes() == fakes.files[PARIS_TGZ[1]]
    assert not (downloads / "rparis6k").exists()  # the staging folder is gone, jpg/ is in place
    assert load_dataset({"kind": "revisited", "root": str(root), "name": "rparis6k"}).n_db == 4
    host.requests.clear()
    assert _main(host, root, "rparis6k") == 0
    assert host.requests == [] and "rparis6k: already there" in capsys.readouterr().out


def test_more_r1m_archives_extend_a_partial_download(host, fakes, tmp_path):
    host.files.update(fakes.files)
    root = tmp_path / "data"
    assert _main(host, root, "revisitop1m", "--limit-archives", "1") == 0
    assert _files(root / "revisitop1m" / "jpg") == ["a0/r1m_00.jpg", "a0/r1m_01.jpg"]
    host.requests.clear()
    assert _main(host, root, "revisitop1m", "--limit-archives", "2") == 0
    assert [p for p, _ in host.requests] == [R1M_TGZ[1]]  # the list is there, archive 1 is extracted already
    assert _files(root / "revisitop1m" / "jpg") == sorted(fakes.images["revisitop1m"])


# -- (c) corrupt, truncated or wrong files -----------------------------------------------------------------------------
def _only(root: Path, allowed: set[str]) -> None:
    """Nothing half-extracted: no image folder anywhere, no temporary folder, no file beyond ``allowed``."""
    ds = root / "roxford5k"
    assert not (ds / "jpg").exists()
    assert not [p for p in ds.rglob("*") if p.is_dir() and (p.name == "jpg" or ".extracting." in p.name)]
    assert set(_files(ds)) <= allowed | {"gnd_roxford5k.pkl"}, _files(ds)


def test_a_file_that_does_not_match_its_checksum_is_deleted_and_named(host, fakes, tmp_path, capsys):
    host.files.update(fakes.files)
    checksums = tmp_path / "sums.json"
    checksums.write_text(json.dumps({"oxbuild_images-v1.tgz": "0" * 64}))
    root = tmp_path / "data"
    assert _main(host, root, "roxford5k", "--checksums", str(checksums)) == 1
    err = capsys.readouterr().err
    real = hashlib.sha256(fakes.files[OXFORD_TGZ]).hexdigest()
    assert "oxbuild_images-v1.tgz" in err and f"expected sha256 {'0' * 64}, got {real}" in err
    assert "rerun" in err and "check the URL" in err and "Traceback" not in err
    _only(root, set())  # neither the archive nor its .part

    checksums.write_text(json.dumps({"oxbuild_images-v1.tgz": real}))  # the right digest: it goes through
    assert _main(host, root, "roxford5k", "--checksums", str(checksums)) == 0
    assert (root / "roxford5k" / "jpg" / "all_souls_000000.jpg").is_file()


def test_a_body_shorter_than_its_content_length_never_becomes_the_file(host, fakes, tmp_path, capsys):
    host.files.update(fakes.files)
    host.short.add(OXFORD_TGZ)
    root = tmp_path / "data"
    assert _main(host, root, "roxford5k") == 1
    err = capsys.readouterr().err
    size = len(fakes.files[OXFORD_TGZ])
    assert ".oxbuild_images-v1.tgz.part" in err and f"after {size - 1} of {size} bytes" in err
    assert "rerun the same command to resume" in err
    _only(root, {".download/.oxbuild_images-v1.tgz.part"})


@pytest.mark.parametrize("case", ["not an archive", "no images", "unsafe entry", "image missing"])
def test_a_wrong_archive_leaves_nothing_half_extracted(host, fakes, tmp_path, capsys, case):
    host.files.update(fakes.files)
    body = {"not an archive": b"<html>moved</html>" * 40, "no images": _tgz({"README.txt": b"hello"}),
            "unsafe entry": _tgz({"../../escaped.jpg": _jpeg(1), "ok.jpg": _jpeg(2)}),
            "image missing": _tgz({k: v for k, v in fakes.images["roxford5k"].items()
                                   if k != "all_souls_000003.jpg"})}[case]
    host.files[OXFORD_TGZ] = body
    root = tmp_path / "data"
    assert _main(host, root, "roxford5k") == 1
    err = capsys.readouterr().err
    expected = {"not an archive": "cannot extract archive oxbuild_images-v1.tgz",
                "no images": "archive oxbuild_images-v1.tgz holds no file matching '*.jpg'",
                "unsafe entry": "archive oxbuild_images-v1.tgz holds an unsafe entry",
                "image missing": "1 of 7 image files are missing: all_souls_000003.jpg"}[case]
    assert expected in err and "Traceback" not in err
    assert not list(tmp_path.rglob("escaped.jpg"))
    if case == "image missing":  # extracted, but jpg/ never appears in place: it stays in the staging folder
        assert not (root / "roxford5k" / "jpg").exists() and not (root / "roxford5k" / ".complete").exists()
    else:
        _only(root, {ARCHIVE_DEST})


# -- (d) an interrupted transfer resumes -------------------------------------------------------------------------------
def test_a_dropped_connection_keeps_the_part_and_the_rerun_resumes_with_a_range(host, fakes, tmp_path, capsys):
    host.files.update(fakes.files)
    body = fakes.files[OXFORD_TGZ]
    cut = len(body) // 3
    assert cut > 100
    host.drop_after[OXFORD_TGZ] = cut
    root = tmp_path / "data"
    assert _main(host, root, "roxford5k") == 1
    err = capsys.readouterr().err
    assert f"closed the connection after {cut} of {len(body)} bytes" in err
    assert "partial file is kept: rerun the same command to resume" in err
    part = root / "roxford5k" / ".download" / ".oxbuild_images-v1.tgz.part"
    assert part.read_bytes() == body[:cut]
    _only(root, {".download/.oxbuild_images-v1.tgz.part"})

    assert _main(host, root, "roxford5k") == 0
    assert host.ranges(OXFORD_TGZ) == [None, f"bytes={cut}-"]
    ds = load_dataset({"kind": "revisited", "root": str(root), "name": "roxford5k"})
    assert all(p.read_bytes() == fakes.images["roxford5k"][p.name] for p in ds.db_paths + ds.query_paths)
    assert not part.exists()


def test_download_restarts_when_the_server_ignores_the_range(host, tmp_path, capsys):
    host.files["/f.bin"] = bytes(range(256)) * 8
    host.ignore_range = True
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"stale bytes")
    assert download(host.url + "/f.bin", dest, progress=False) == dest
    assert dest.read_bytes() == host.files["/f.bin"] and not part_path(dest).exists()
    assert host.ranges("/f.bin") == ["bytes=11-"] and "does not resume" in capsys.readouterr().out


def test_a_whole_part_left_by_a_crash_is_verified_and_moved_into_place(host, tmp_path):
    host.files["/f.bin"] = b"all of it"
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"all of it")
    download(host.url + "/f.bin", dest, progress=False)
    assert host.ranges("/f.bin") == ["bytes=9-"]  # answered 416 with the full size: nothing left to fetch
    assert dest.read_bytes() == b"all of it" and not part_path(dest).exists()


def test_a_stalled_connection_raises_and_keeps_the_part(host, tmp_path):
    host.files["/slow.bin"] = b"x" * 5000
    host.stall["/slow.bin"] = 1000
    dest = tmp_path / "slow.bin"
    with pytest.raises(DownloadError, match=r"stalled: no data for 0.3 s after 1000 of 5000 bytes.*rerun the same "
                                            r"command to resume"):
        download(host.url + "/slow.bin", dest, progress=False, timeout=0.3)
    assert part_path(dest).stat().st_size == 1000 and not dest.exists()


def test_ctrl_c_while_downloading_keeps_the_part_and_never_the_destination(host, tmp_path, monkeypatch):
    from lit_retrieval import fetching

    body = bytes(range(256)) * 4
    host.files["/f.bin"] = body
    real_read, calls = fetching._read, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_read(*args)

    monkeypatch.setattr(fetching, "_read", interrupted)
    dest = tmp_path / "f.bin"
    with pytest.raises(KeyboardInterrupt):
        download(host.url + "/f.bin", dest, progress=False, chunk=100)
    assert part_path(dest).read_bytes() == body[:200] and not dest.exists()
    monkeypatch.undo()
    download(host.url + "/f.bin", dest, progress=False, size=len(body))
    assert dest.read_bytes() == body and host.ranges("/f.bin") == [None, "bytes=200-"]


def test_an_existing_file_is_kept_when_it_verifies_and_replaced_when_not(host, tmp_path, capsys):
    host.files["/f.bin"] = b"0123456789"
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"0123456789")
    download(host.url + "/f.bin", dest, size=10, sha256=hashlib.sha256(b"0123456789").hexdigest()[:8])
    assert host.requests == [] and "already there" in capsys.readouterr().out
    dest.write_bytes(b"01234")
    download(host.url + "/f.bin", dest, size=10, progress=False)
    assert dest.read_bytes() == b"0123456789" and len(host.requests) == 1


def test_http_errors_and_unreachable_hosts_say_what_and_where(host, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 .* for missing\.tgz .*check the address"):
        download(host.url + "/missing.tgz", tmp_path / "missing.tgz", progress=False)
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1:9 .*check the network"):
        download("http://127.0.0.1:9/x.tgz", tmp_path / "x.tgz", progress=False, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_extract_merges_into_an_existing_folder_and_flattens(tmp_path):
    first, second = tmp_path / "1.tgz", tmp_path / "2.tgz"
    first.write_bytes(_tgz({"d/a.jpg": b"a", "d/e/b.jpg": b"b"}))
    second.write_bytes(_tgz({"f/c.jpg": b"c"}))
    assert extract(first, tmp_path / "flat", expect="*.jpg", flatten=True) == 2
    assert extract(second, tmp_path / "flat", expect="*.jpg", flatten=True) == 1
    assert _files(tmp_path / "flat") == ["a.jpg", "b.jpg", "c.jpg"]
    assert extract(first, tmp_path / "kept") == 2 and _files(tmp_path / "kept") == ["d/a.jpg", "d/e/b.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.tgz", "2.tgz", "flat", "kept"]  # no temporary folder


# -- (e) Ctrl-C during extraction --------------------------------------------------------------------------------------
def test_ctrl_c_during_extraction_leaves_no_image_folder_and_the_rerun_completes(host, fakes, tmp_path, monkeypatch,
                                                                                  capsys):
    host.files.update(fakes.files)
    real_makefile, calls = tarfile.TarFile.makefile, []

    def interrupted(self, tarinfo, targetpath):
        calls.append(tarinfo.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_makefile(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", interrupted)
    root = tmp_path / "data"
    assert _main(host, root, "roxford5k") == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().err
    assert len(calls) == 3  # stopped in the middle: two images were written in the temporary folder
    _only(root, {ARCHIVE_DEST})

    monkeypatch.undo()
    host.requests.clear()
    assert _main(host, root, "roxford5k") == 0
    assert host.requests == []  # the ground truth and the archive were complete: only the extraction is redone
    ds = load_dataset({"kind": "revisited", "root": str(root), "name": "roxford5k"})
    assert ds.n_db == 5 and all(p.read_bytes() == fakes.images["roxford5k"][p.name] for p in ds.db_paths)


# -- (f) --help --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module, names", [
    ("lit_retrieval.data.download", ["roxford5k", "rparis6k", "revisitop1m", "--limit-archives", "--checksums"]),
    ("lit_retrieval.backbones.fetch", ["resnet101", "resnet50", "vgg16", "efficientnet_lite0", "--dir"]),
])
def test_help_lists_the_names(module, names):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in names), done.stdout


# -- (g) backbone weights ----------------------------------------------------------------------------------------------
def _checkpoint() -> tuple[dict[str, torch.Tensor], bytes]:
    state = {"conv.weight": torch.arange(12.0).reshape(3, 4), "fc.bias": torch.tensor([0.5, -1.0])}
    buf = io.BytesIO()
    torch.save(state, buf)
    return state, buf.getvalue()


def test_every_backbone_has_an_address_or_bundled_weights():
    from torchvision import models

    urls = weights_fetch.imagenet_urls()
    assert set(urls) | set(weights_fetch.BUNDLED) == set(BACKBONES)
    assert urls["resnet50"] == models.ResNet50_Weights.IMAGENET1K_V1.url
    assert urls["vgg16"] == models.VGG16_Weights.IMAGENET1K_V1.url


def test_fetch_saves_verified_weights_that_load(host, tmp_path, monkeypatch, capsys):
    state, data = _checkpoint()
    name = f"resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    host.files[f"/models/{name}"] = data
    monkeypatch.setattr(weights_fetch, "imagenet_urls", lambda: {"resnet50": f"https://download.pytorch.org/models/{name}"})
    folder = tmp_path / "weights"
    assert weights_fetch.main(["resnet50", "--dir", str(folder), "--base-url", host.url, "--no-progress"]) == 0
    assert _files(folder) == [name]
    loaded = read_state_dict(folder / name)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert str(folder / name) in capsys.readouterr().out


def test_fetch_refuses_weights_whose_name_prefix_does_not_match(host, tmp_path, capsys):
    _, data = _checkpoint()
    host.files["/models/resnet50-0676ba61.pth"] = data  # torchvision's real name, other content
    folder = tmp_path / "weights"
    assert weights_fetch.main(["resnet50", "--dir", str(folder), "--base-url", host.url, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "resnet50-0676ba61.pth" in err and "expected sha256 0676ba61, got" in err and "Traceback" not in err
    assert _files(folder) == []


def test_fetch_of_the_bundled_backbone_downloads_nothing(host, tmp_path, capsys):
    assert weights_fetch.main(["efficientnet_lite0", "--dir", str(tmp_path), "--base-url", host.url]) == 0
    assert "nothing to download" in capsys.readouterr().out and host.requests == []


def test_resolve_imagenet_checkpoint_downloads_into_the_hub_cache(host, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("LIT_RETRIEVAL_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("LIT_RETRIEVAL_OFFLINE", raising=False)
    monkeypatch.setattr(weights_module, "host_reachable", lambda *args, **kwargs: True)
    state, data = _checkpoint()
    name = f"resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    host.files[f"/models/{name}"] = data
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    loaded = resolve_imagenet_checkpoint("resnet50", f"{host.url}/models/{name}")
    assert torch.equal(loaded["conv.weight"], state["conv.weight"]) and _files(hub) == [name]

    host.files["/models/resnet50-0676ba61.pth"] = data
    with pytest.raises(WeightsNotFoundError, match=r"download failed: .*expected sha256 0676ba61.*backbone\.weights"):
        resolve_imagenet_checkpoint("resnet50", f"{host.url}/models/resnet50-0676ba61.pth")
    assert _files(hub) == [name]


@pytest.mark.parametrize("content, expected", [
    ("not json", "cannot read the checksums file"),
    ('["a list"]', "not a JSON object of file name -> sha256"),
    ('{"holidays.tgz": "ab12"}', "names files no dataset has: ['holidays.tgz']"),
])
def test_a_bad_checksums_file_is_refused_before_any_download(host, tmp_path, capsys, content, expected):
    sums = tmp_path / "sums.json"
    sums.write_text(content)
    assert _main(host, tmp_path / "data", "roxford5k", "--checksums", str(sums)) == 1
    err = capsys.readouterr().err
    assert expected in err and "Fix:" in err and str(sums) in err
    assert host.requests == [] and not (tmp_path / "data").exists()


def test_bad_options_are_refused_with_their_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        data_download.main(["revisitop1m", "--limit-archives", "0", "--root", str(tmp_path)])
    assert exit_.value.code == 2 and "--limit-archives must be between 1 and 100" in capsys.readouterr().err
    assert data_download.main(["roxford5k", "--root", str(tmp_path), "--base-url", "mirror:8000"]) == 1
    assert "has no scheme or host" in capsys.readouterr().err
