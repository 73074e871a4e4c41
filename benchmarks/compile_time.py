"""Cold compile time of a training step, baseline against LRT, per-block against whole-model.

Each measurement runs in a fresh process with empty compile caches: the time to the end of the
first step (compile included) and the median of the next steps. Prints the ratio of LRT's cold
compile time to the baseline's. CPU by default; on a GPU pass --device cuda --dtype bfloat16.

    python benchmarks/compile_time.py --config small               # the demo's model (issue 11 target: <= 1.5x)
    python benchmarks/compile_time.py --config d20 --device cuda --dtype bfloat16 --whole
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, statistics, sys, time, torch
import lrt
from lrt.experiments.bench import bench_config
from lrt.presets import VARIANTS
from lrt.model import compile_model
config, schedule, device, dtype, whole, batch, seq = json.loads(sys.argv[1])
cfg, default_batch = bench_config(config, **({"sequence_len": seq} if seq else {}))
if schedule == "baseline":
    cfg = lrt.LRTConfig(**{**cfg.to_dict(), **VARIANTS["baseline"]})
torch.manual_seed(0)
model = lrt.LRT(cfg, device=device)
forward = torch.compile(model, dynamic=False) if whole else compile_model(model)
data = torch.randint(0, cfg.vocab_size, (batch or default_batch, cfg.sequence_len + 1), device=device)
sched = lrt.parse_schedule(schedule)
times = []
for _ in range(4):
    t0 = time.perf_counter()
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        loss = forward(data[:, :-1], data[:, 1:], schedule=sched, return_logits=False).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
print(json.dumps({"first": times[0], "step": statistics.median(times[1:])}))
"""


def measure(config, schedule, args, whole):
    with tempfile.TemporaryDirectory() as cache:
        env = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": cache,
            "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
            "TORCHINDUCTOR_AUTOGRAD_CACHE": "0",
        }
        spec = json.dumps([config, schedule, args.device, args.dtype, whole, args.batch_size, args.seq_len])
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return {**result, "process": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small")
    p.add_argument("--schedules", default="baseline,interleaved:2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--whole", action="store_true", help="also measure torch.compile of the whole model")
    args = p.parse_args()
    modes = [False, True] if args.whole else [False]
    report = {}
    for whole in modes:
        for schedule in args.schedules.split(","):
            report[(whole, schedule)] = r = measure(args.config, schedule, args, whole)
            print(
                f"{'whole model' if whole else 'per block':<12}{schedule:<16} first step (cold compile) "
                f"{r['first']:7.1f} s, then {1e3 * r['step']:8.1f} ms/step",
                flush=True,
            )
    base = args.schedules.split(",")[0]
    for whole in modes:
        for schedule in args.schedules.split(",")[1:]:
            ratio = report[(whole, schedule)]["first"] / report[(whole, base)]["first"]
            print(f"{'whole model' if whole else 'per block'}: cold compile of {schedule} / {base} = {ratio:.2f}")


if __name__ == "__main__":
    main()
