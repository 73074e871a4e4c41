"""Explicit downloads for users with internet: FineWeb-Edu shards in the layout nanochat uses.
Training never downloads; this is the one place that touches the network."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

FINEWEB_EDU = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def download_shards(out: str | Path, num: int, base_url: str | None = None) -> list[Path]:
    """Fetch shards 0..num-1 into `out`, skipping those already there; each lands atomically."""
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        path = out / shard_name(i)
        if not path.exists():
            url = f"{base_url or FINEWEB_EDU}/{shard_name(i)}"
            tmp = path.with_suffix(".part")
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
        paths.append(path)
    return paths
