"""Making Fashion-MNIST available on a fresh machine, the first step of `make run`.

In order: files already present; Debian's package `dataset-fashion-mnist` where apt-get
exists and we are root; torchvision's downloader into the data folder. When none of these
can work the error says what to do by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from instil.data import fmnist
from instil.errors import InstilError


def present(root: Path) -> Path | None:
    try:
        return fmnist.locate(root)
    except InstilError:
        return None


def apt_install() -> bool:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    install = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
    # A fresh machine's package lists may not know the package yet: update once, then retry.
    return _quiet(install) or (_quiet(["apt-get", "update"]) and _quiet(install))


def _quiet(cmd: list[str]) -> bool:
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def torchvision_download(root: Path) -> bool:
    from torchvision.datasets import FashionMNIST

    try:
        for train in (True, False):
            FashionMNIST(root=str(root), train=train, download=True)
    except Exception:  # any network or disk failure means this route cannot work here
        return False
    return True


def ensure_fmnist(root: Path) -> Path:
    """Returns the folder holding the IDX files, installing or downloading them if needed."""
    found = present(root)
    if found is None and apt_install():
        found = present(root)
    if found is None and torchvision_download(root):
        found = present(root)
    if found is None:
        raise InstilError(
            "Fashion-MNIST is not on this machine and could not be installed: run "
            "'apt-get install -y dataset-fashion-mnist' as root, or put the four IDX files "
            f"(train-images-idx3-ubyte.gz, ...) into {root}")
    return found
