"""Download the revisited benchmarks and the R1M distractors into the layout this project reads.

    python -m lit_retrieval.data.download roxford5k rparis6k [--root DIR]
    python -m lit_retrieval.data.download revisitop1m --limit-archives 2     # the first 2 of R1M's 100 archives

Each dataset lands in ``<root>/<name>/``: ``gnd_<name>.pkl`` + ``jpg/<image>.jpg`` for ROxford5k and RParis6k (what
``dataset=roxford5k`` / ``dataset=rparis6k`` read), ``revisitop1m.txt`` + ``jpg/...`` for R1M (what
``dataset.distractors=revisitop1m`` reads). The files come from revisitop's official addresses (as its
``python/download.py`` fetches them); ``--base-url`` replaces their hosts (a mirror). ``<root>`` defaults to
``$LIT_RETRIEVAL_DATA``, else ``data/`` in the repository (``paths.data_dir``).

Archives are downloaded into ``<root>/<name>/.download/`` (resumable: a rerun after an interruption continues where
it stopped), checked (the size the server announced, the sha256 given with ``--checksums``, then that the archive
opens and holds images), extracted there and deleted once extracted (``--keep-archives`` keeps them). ``jpg/``
appears only once every archive is extracted and the dataset checks out with the project's own loaders (the ground
truth parses, every listed image exists); then ``<root>/<name>/.complete`` marks it done, and a rerun skips it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from ..atomic import atomic_json
from ..fetching import DownloadError, download, extract, rebase, run_command, url_filename
from .errors import DataError, GroundTruthError

_OXFORD = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
_PARIS = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
_GND = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
_R1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
R1M_ARCHIVES = 100
COMPLETE = ".complete"
STAGING = ".download"
_MAX_LISTED = 5


@dataclasses.dataclass(frozen=True)
class Remote:
    """One file to download: its address and, when known, its sha256 and size in bytes."""

    url: str
    sha256: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return url_filename(self.url)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how it is laid out.

    Attributes:
        name: folder name under the root (and name of its ground truth / image list).
        summary: one line for ``--help``.
        archives: the image archives, extracted into ``jpg/``.
        listing: the ground truth (``gnd_<name>.pkl``) or image list (``<name>.txt``), saved in ``<root>/<name>/``.
        kind: ``"revisited"`` (checked with the revisited loader) or ``"distractors"`` (R1M's list; partial
            downloads allowed with ``--limit-archives``).
        flatten: put every image directly in ``jpg/`` (revisitop's layout of Oxford and Paris), else keep the
            archives' folders.
        expect: file names every archive must hold at least one of.
    """

    name: str
    summary: str
    archives: tuple[Remote, ...]
    listing: Remote
    kind: Literal["revisited", "distractors"]
    flatten: bool
    expect: str = "*.jpg"


# revisitop's python/download.py (current version) fetches oxbuild_images-v1.tgz and paris_{1,2}-v1.tgz over https;
# its earlier version named them oxbuild_images.tgz / paris_1.tgz / paris_2.tgz (http), the addresses the Oxford
# page used to give. Their sha256 are not published: downloads are checked by size and content (--checksums adds
# a digest check). The Paris archives nest paris/<landmark>/<image>.jpg (flattened into jpg/, as revisitop does);
# a few of their images are corrupt in the original archives and are kept as they are (revisitop keeps them too).
DATASETS: dict[str, DatasetSpec] = {
    "roxford5k": DatasetSpec(
        "roxford5k", "Revisited Oxford 5k: 4,993 database images and 70 queries (Radenovic et al., CVPR 2018)",
        (Remote(f"{_OXFORD}/oxbuild_images-v1.tgz"),), Remote(f"{_GND}/roxford5k/gnd_roxford5k.pkl"),
        kind="revisited", flatten=True),
    "rparis6k": DatasetSpec(
        "rparis6k", "Revisited Paris 6k: 6,322 database images and 70 queries (Radenovic et al., CVPR 2018)",
        (Remote(f"{_PARIS}/paris_1-v1.tgz"), Remote(f"{_PARIS}/paris_2-v1.tgz")),
        Remote(f"{_GND}/rparis6k/gnd_rparis6k.pkl"), kind="revisited", flatten=True),
    "revisitop1m": DatasetSpec(
        "revisitop1m", f"R1M distractors: 1,001,001 images in {R1M_ARCHIVES} archives (large: try --limit-archives "
        "N first)",
        tuple(Remote(f"{_R1M}/jpg/revisitop1m.{i}.tar.gz") for i in range(1, R1M_ARCHIVES + 1)),
        Remote(f"{_R1M}/revisitop1m.txt"), kind="distractors", flatten=False),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to download: into ``root``, from ``base_url`` (``None``: the official hosts), with the user's
    ``checksums`` (file name -> sha256), the first ``limit_archives`` archives of a distractor set."""

    root: Path
    base_url: str | None = None
    checksums: Mapping[str, str] = dataclasses.field(default_factory=dict)
    limit_archives: int | None = None
    keep_archives: bool = False
    progress: bool = True


def default_root() -> Path:
    """``$LIT_RETRIEVAL_DATA``, else ``data/`` in the repository (``conf/paths/default.yaml``'s ``data_dir``)."""
    if os.environ.get("LIT_RETRIEVAL_DATA"):
        return Path(os.environ["LIT_RETRIEVAL_DATA"])
    from ..cli import project_root

    return project_root() / "data"


def wanted_archives(spec: DatasetSpec, settings: Settings) -> tuple[Remote, ...]:
    """The archives of ``spec`` to download (``--limit-archives`` applies to distractor sets only)."""
    if spec.kind == "distractors" and settings.limit_archives is not None:
        return spec.archives[: settings.limit_archives]
    return spec.archives


def fetch(remote: Remote, dest: Path, settings: Settings) -> Path:
    """Download ``remote`` into ``dest`` (through ``--base-url``, verified by the known size and sha256)."""
    sha256 = settings.checksums.get(remote.filename, remote.sha256)
    return download(rebase(remote.url, settings.base_url), dest, sha256=sha256, size=remote.size,
                    progress=settings.progress)


def read_complete(ds: Path) -> list[str] | None:
    """The archives ``<ds>/.complete`` records as extracted and checked, or ``None`` when the dataset is not marked
    done."""
    marker = ds / COMPLETE
    if not marker.is_file():
        return None
    try:
        return list(json.loads(marker.read_text())["archives"])
    except (ValueError, KeyError, TypeError):
        return None


def reopen(ds: Path, stage: Path, done: Sequence[str]) -> None:
    """Prepare ``ds`` for (more) archives: an existing ``jpg/`` moves into the staging folder ``stage`` (it is moved
    into place again once everything checks out) and the archives ``done`` (recorded in ``.complete``) count as
    extracted into it; without a staged ``jpg/``, no archive counts as extracted."""
    stage.mkdir(parents=True, exist_ok=True)
    final, staged = ds / "jpg", stage / "jpg"
    if final.exists() and staged.exists():
        raise DownloadError(f"two image folders of {ds.name}: {final} and an unfinished {staged}", ds,
                            f"delete the one you do not want (the unfinished one: {staged}) and rerun the same command")
    if final.exists():
        os.replace(final, staged)
    if staged.exists():
        for name in done:
            (stage.parent / f"{name}.extracted").touch()
    else:
        for marker in stage.parent.glob("*.extracted"):
            marker.unlink()
    (ds / COMPLETE).unlink(missing_ok=True)


def fetch_dataset(spec: DatasetSpec, settings: Settings) -> Path:
    """Download, extract and check the dataset ``spec`` into ``<root>/<name>/``; return that folder.

    Resumes whatever an earlier run left (partial downloads, archives downloaded or extracted already) and does
    nothing for a dataset marked complete with at least the requested archives.
    """
    ds = settings.root / spec.name
    archives = wanted_archives(spec, settings)
    names = [a.filename for a in archives]
    done = read_complete(ds)
    if done is not None and (ds / "jpg").is_dir() and set(names) <= set(done):
        print(f"{spec.name}: already there ({ds})")
        return ds
    downloads = ds / STAGING
    stage = downloads / spec.name  # mirrors <root>/<name>/ until everything checks out
    reopen(ds, stage, done or [])
    listing = fetch(spec.listing, ds / spec.listing.filename, settings)
    for i, remote in enumerate(archives, 1):
        marker = downloads / f"{remote.filename}.extracted"
        if marker.exists():
            continue
        print(f"{spec.name}: archive {i}/{len(archives)}: {remote.filename}")
        archive = fetch(remote, downloads / remote.filename, settings)
        count = extract(archive, stage / "jpg", expect=spec.expect, flatten=spec.flatten)
        marker.touch()
        print(f"{spec.name}: extracted {count} files from {remote.filename}")
        if not settings.keep_archives:
            archive.unlink()
    shutil.copyfile(listing, stage / listing.name)
    summary = check_dataset(spec, stage.parent, listing, len(archives))
    os.replace(stage / "jpg", ds / "jpg")
    atomic_json({"dataset": spec.name, "archives": names, "listing": listing.name, "summary": summary}, ds / COMPLETE)
    if settings.keep_archives:
        shutil.rmtree(stage, ignore_errors=True)
    else:
        shutil.rmtree(downloads, ignore_errors=True)
    print(f"{spec.name}: done, {summary} ({ds})")
    return ds


def check_dataset(spec: DatasetSpec, stage_root: Path, listing: Path, n_archives: int) -> str:
    """Check the staged dataset ``<stage_root>/<name>/`` with the project's own loaders; return a one-line summary.

    A ground truth that does not parse is deleted (a rerun downloads it again); missing images are an error naming
    some of them.
    """
    try:
        if spec.kind == "revisited":
            from .revisited import load_revisited

            dataset = load_revisited(stage_root, spec.name)
            return f"{dataset.n_db} database images, {len(dataset.query_paths)} queries"
        return check_distractors(stage_root / spec.name, spec.name, n_archives == len(spec.archives))
    except GroundTruthError as err:
        listing.unlink(missing_ok=True)
        raise DownloadError(f"{spec.name}: the downloaded {listing.name} is not a valid ground truth: {err.what}",
                            listing, "rerun the same command to download it again; if it fails the same way, check "
                            "its address (--base-url)") from err
    except DataError as err:
        raise DownloadError(f"{spec.name}: the archives do not hold every listed image: {err.what}", listing.parent,
                            f"the archives at the source do not match {listing.name}: check the addresses "
                            f"(--base-url); to start over, delete {listing.parent} and rerun") from err


def check_distractors(folder: Path, name: str, whole: bool) -> str:
    """Check R1M in ``folder`` (``<name>.txt`` + ``jpg/``) with the distractor loader: every listed image with all
    archives (``whole``); with some archives, how many leading listed images are there (what
    ``dataset.distractors_limit`` can read)."""
    from .distractors import read_list

    if whole:
        paths = read_list(folder, name)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            shown = ", ".join(str(p.relative_to(folder / "jpg")) for p in missing[:_MAX_LISTED])
            raise DataError(f"{len(missing)} of {len(paths)} listed images are missing: {shown}", folder / "jpg")
        return f"{len(paths)} distractor images"
    jpg = folder / "jpg"
    present = {p.relative_to(jpg).as_posix() for p in jpg.rglob("*") if p.is_file()}
    lines = [ln.strip() for ln in (folder / f"{name}.txt").read_text().splitlines() if ln.strip()]
    leading = next((i for i, ln in enumerate(lines) if ln not in present and f"{ln}.jpg" not in present), len(lines))
    paths = read_list(folder, name, limit=leading)
    limit = "" if leading == len(lines) else f" (use dataset.distractors_limit={leading})"
    return f"{len(present)} images extracted, the first {len(paths)} of {len(lines)} listed are there{limit}"


def read_checksums(path: Path | None) -> dict[str, str]:
    """The ``--checksums`` file: JSON ``{"<file name>": "<sha256>"}`` naming files of the known datasets."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DownloadError(f"cannot read the checksums file ({err})", path,
                            'give a JSON file {"<file name>": "<sha256 hex>", ...}') from err
    known = {r.filename for spec in DATASETS.values() for r in (*spec.archives, spec.listing)}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DownloadError("the checksums file is not a JSON object of file name -> sha256 string", path,
                            'give a JSON file {"<file name>": "<sha256 hex>", ...}')
    unknown = sorted(set(data) - known)
    if unknown:
        raise DownloadError(f"the checksums file names files no dataset has: {unknown[:_MAX_LISTED]}", path,
                            "use the archive and ground-truth file names, e.g. oxbuild_images-v1.tgz, "
                            "gnd_roxford5k.pkl, revisitop1m.1.tar.gz")
    return {k: v.strip().lower() for k, v in data.items()}


def parser() -> argparse.ArgumentParser:
    datasets = "\n".join(f"  {name:<12} {spec.summary}" for name, spec in DATASETS.items())
    p = argparse.ArgumentParser(
        prog="python -m lit_retrieval.data.download", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download datasets into <root>/<name>/ (gnd_<name>.pkl or <name>.txt + jpg/), resumably and "
                    "verified.\n\ndatasets:\n" + datasets,
        epilog="A rerun skips what is complete and resumes what was interrupted.")
    p.add_argument("datasets", nargs="+", choices=list(DATASETS), metavar="DATASET", help=", ".join(DATASETS))
    p.add_argument("--root", type=Path, default=None,
                   help="folder holding one sub-folder per dataset (default: $LIT_RETRIEVAL_DATA, else data/ in "
                        "the repository: what dataset.root / paths.data_dir point at)")
    p.add_argument("--base-url", default=None, help="replace the official hosts by this one (a mirror), e.g. "
                                                    "http://mirror:8000; the file paths stay the same")
    p.add_argument("--checksums", type=Path, default=None,
                   help='JSON file {"<file name>": "<sha256>"}: also verify these files by their digest')
    p.add_argument("--limit-archives", type=int, default=None, metavar="N",
                   help=f"revisitop1m only: download the first N of its {R1M_ARCHIVES} archives")
    p.add_argument("--keep-archives", action="store_true", help="keep the archives in <root>/<name>/.download/")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 done, 1 failed, 130 interrupted)."""
    args = parser().parse_args(argv)
    if args.limit_archives is not None and not 1 <= args.limit_archives <= R1M_ARCHIVES:
        parser().error(f"--limit-archives must be between 1 and {R1M_ARCHIVES}")

    def work() -> None:
        settings = Settings(root=args.root or default_root(), base_url=args.base_url,
                            checksums=read_checksums(args.checksums), limit_archives=args.limit_archives,
                            keep_archives=args.keep_archives, progress=not args.no_progress)
        for name in dict.fromkeys(args.datasets):
            fetch_dataset(DATASETS[name], settings)

    return run_command(work, "--root")


if __name__ == "__main__":
    sys.exit(main())
