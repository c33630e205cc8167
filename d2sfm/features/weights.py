"""Where D2-Net weights come from: a file path, ``$D2SFM_WEIGHTS``, or one of the official checkpoints, downloaded
once into a cache folder.

A download goes to a temporary file, is checked (complete length, loadable D2-Net checkpoint) and only then renamed
into the cache, so an interrupted or corrupted transfer can never be mistaken for a checkpoint later.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.features.checkpoint import read_checkpoint, validate_state_dict
from d2sfm.io.atomic import atomic_path

DEFAULT_BASE_URL = "https://dusmanu.com/files/d2-net"
DEFAULT_WEIGHTS = "d2_tf"


@dataclass(frozen=True)
class KnownWeights:
    name: str
    description: str

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get("D2SFM_WEIGHTS_BASE_URL") or DEFAULT_BASE_URL
        return f"{base.rstrip('/')}/{self.name}.pth"


KNOWN_WEIGHTS = {
    w.name: w
    for w in [
        KnownWeights("d2_ots", "off-the-shelf ImageNet VGG16 (Caffe weights), no D2 training"),
        KnownWeights("d2_tf", "fine-tuned on MegaDepth (the paper's main model)"),
        KnownWeights("d2_tf_no_phototourism", "fine-tuned on MegaDepth without the PhotoTourism scenes"),
    ]
}


def cache_dir() -> Path:
    """``$D2SFM_CACHE``, else ``$XDG_CACHE_HOME/d2sfm``, else ``~/.cache/d2sfm``."""
    if os.environ.get("D2SFM_CACHE"):
        return Path(os.environ["D2SFM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "d2sfm"


def resolve_weights(spec: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Turn ``--weights`` (a path or a known name; None means ``$D2SFM_WEIGHTS`` or d2_tf) into a local file."""
    if spec is None:
        spec = os.environ.get("D2SFM_WEIGHTS") or DEFAULT_WEIGHTS
    spec = str(spec)
    if spec in KNOWN_WEIGHTS:
        return fetch_known_weights(spec, progress=progress)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise D2sfmError(
        f"{spec}: no such weights file and not a known checkpoint name; pass a .pth path or one of "
        f"{', '.join(KNOWN_WEIGHTS)}"
    )


def fetch_known_weights(name: str, progress: bool = True, base_url: str | None = None) -> Path:
    """Return the cached file for an official checkpoint, downloading it the first time."""
    known = KNOWN_WEIGHTS[name]
    target = cache_dir() / f"{name}.pth"
    if target.is_file():
        return target
    url = known.url(base_url)
    try:
        download_checkpoint(url, target, progress=progress)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise D2sfmError(
            f"could not download {name} from {url} ({reason}); download it by hand to {target} "
            "or pass --weights PATH"
        ) from None
    return target


def download_checkpoint(url: str, target: Path, progress: bool = True, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``target`` atomically; refuse a short transfer or a file that is not a D2-Net checkpoint."""
    with atomic_path(target) as temporary:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(temporary, "wb") as out:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected is not None else None
            received = 0
            with tqdm(total=expected, unit="B", unit_scale=True, desc=f"downloading {target.name}",
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise ConnectionError(f"transfer cut short: {received} of {expected} bytes")
        try:
            validate_state_dict(read_checkpoint(temporary)["model"], url)
        except D2sfmError as error:
            raise ConnectionError(f"the downloaded file is not a valid D2-Net checkpoint: {error}") from None
