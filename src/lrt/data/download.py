"""Explicit downloads for users with internet: FineWeb-Edu shards and the CORE eval bundle, in
the layouts nanochat uses. Training and evaluation never download; this module is the one
place that touches the network."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

FINEWEB_EDU = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
CORE_BUNDLE = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"


def fetch(url: str, path: Path) -> Path:
    """Download url to path through a temporary file, with a progress bar."""
    tmp = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.URLError as e:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"could not download {url}: {e.reason}") from None
    os.replace(tmp, path)
    return path


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def download_shards(out: str | Path, num: int, base_url: str | None = None) -> list[Path]:
    """Fetch shards 0..num-1 into `out`, skipping those already there."""
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        path = out / shard_name(i)
        if not path.exists():
            fetch(f"{base_url or FINEWEB_EDU}/{shard_name(i)}", path)
        paths.append(path)
    return paths


def download_core_bundle(out: str | Path, url: str | None = None) -> Path:
    """Fetch and unpack the CORE eval bundle (core.yaml, eval_meta_data.csv, eval_data/) to `out`."""
    out = Path(out)
    if (out / "core.yaml").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        archive = fetch(url or CORE_BUNDLE, Path(tmp) / "eval_bundle.zip")
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(Path(tmp) / "unpacked")
        except zipfile.BadZipFile:
            raise ValueError(f"{url or CORE_BUNDLE} is not a zip archive") from None
        found = sorted((Path(tmp) / "unpacked").rglob("core.yaml"))
        if not found:
            raise ValueError("the downloaded archive holds no core.yaml")
        shutil.move(str(found[0].parent), out)
    return out
