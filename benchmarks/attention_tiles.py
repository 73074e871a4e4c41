"""Tiles a FlexAttention pass visits against the tiles its causal mask needs (issue 22).

Counts, from the block masks lrt's subset-pass attention builds (attention.span_block_mask), the
tiles each pass of a schedule visits (partial: the causal boundary crosses them; full: entirely
visible) and the tiles its visible (query, key) pairs fill. Each partial tile computes about half
its area in vain. Counting needs no GPU:

    PYTHONPATH=src python benchmarks/attention_tiles.py --seq-len 2048 --schedule interleaved:2
"""

import argparse

from lrt.attention import span_block_mask
from lrt.schedules import checked_plan, parse_schedule


def tiles(start: int, step: int, n_queries: int, n_keys: int) -> tuple[int, int, float]:
    """(partial tiles, full tiles, tiles' worth of visible pairs) of one pass."""
    mask = span_block_mask(start, step, n_queries, n_keys, None, "cpu")
    q, k = mask.BLOCK_SIZE
    full = 0 if mask.full_kv_num_blocks is None else int(mask.full_kv_num_blocks.sum())
    visible = sum(start + step * j + 1 for j in range(n_queries))
    return int(mask.kv_num_blocks.sum()), full, visible / (q * k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--schedule", default="interleaved:2")
    args = p.parse_args()
    T = args.seq_len
    print(f"T = {T}, schedule {args.schedule}; tiles of 128 queries x 128 keys")
    print(f"{'step (positions)':<28}{'queries':>8}{'partial':>9}{'full':>7}{'visited':>9}{'needed':>9}{'waste':>8}")
    steps = [step for steps in checked_plan(parse_schedule(args.schedule), T) for step in steps]
    for name, r in [(f"{s.positions}", s.positions) for s in steps]:
        partial, full, needed = tiles(r.start, r.step, len(r), T)
        visited = partial + full
        print(f"{name:<28}{len(r):>8}{partial:>9}{full:>7}{visited:>9}{needed:>9.1f}{visited / needed - 1:>8.1%}")


if __name__ == "__main__":
    main()
