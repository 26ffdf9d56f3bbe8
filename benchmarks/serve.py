"""Latency per request of robofm-serve against calling the policy in-process, side by side in one run.

One export is loaded twice: in this process (`robofm.load_policy`) and behind `robofm-serve` on 127.0.0.1 in a
process of its own, reached by a `robofm.serve.Client` (as a robot's control loop would reach it). Both
get the same observations, the calls interleaved (in-process first on even steps, the client first on odd ones),
so that a change of load hits both; their actions are checked to be equal. A step either predicts a chunk or
plays the next action of the queue, and the two do the same step by step, so the overhead is reported as the
median (and p90) of the paired per-step differences, for each kind of step. The msgpack encoding and decoding of a
request and its reply is timed alone too. Without `--policy` a debug export is trained first (3 steps, the
tests' tiny config: 2 cameras of 8x8).

    .venv/bin/python benchmarks/serve.py [--policy outputs/finetune] [--requests 400] [--write-results]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, cpu_name, load_now, publish, robofm_revision

sys.path.insert(0, str(REPO))
import robofm  # noqa: E402
from robofm.serve import Client, pack, unpack  # noqa: E402

SECTION = "## Policy server: latency per request"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", type=Path, help="a run or export folder; default: a debug export trained here")
    p.add_argument("--requests", type=int, default=400, help="steps timed on each side")
    p.add_argument("--warmup", type=int, default=20, help="steps run on each side before timing")
    p.add_argument("--image-size", type=int, default=96, help="square camera images sent (the demo renders 96)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (both sides share them)")
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def debug_export(root: Path) -> Path:
    from tests.models.conftest import make_store
    from tests.train.conftest import TINY, train_in_process

    store = make_store(root / "store", n=4, length=16)
    train_in_process(root / "run", TINY + [f"data.path={store}", "trainer.max_steps=3"])
    return root / "run"


def observations(policy, n: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"images": {cam: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for cam in policy.builder.cameras},
             "state": rng.normal(size=policy.state_dim).astype(np.float32), "task": "press the button"}
            for _ in range(n)]  # fmt: skip


def timed(fn, obs) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    action = fn(obs)
    return time.perf_counter() - start, action


def served(path: Path, threads: int):
    """`robofm-serve policy=PATH port=0` in its own process, as a robot's control loop would reach it; (process, port)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "robofm.serve", f"policy={path}", "port=0"], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()
    if "ws://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"robofm-serve did not start: {line!r}")
    return proc, int(line.split("ws://127.0.0.1:")[1].split()[0])


def measure(path: Path, args) -> dict:
    local = robofm.load_policy(path)
    obs = observations(local, args.warmup + args.requests, args.image_size)
    proc, port = served(path, args.threads)
    try:
        with Client("127.0.0.1", port) as client:
            rows, pings = [], []  # rows: (predicts a chunk, in-process s, websocket s)
            for i, o in enumerate(obs):
                predicts = not local.queue
                if i % 2 == 0:
                    (t_local, a_local), (t_remote, a_remote) = timed(local.select_action, o), timed(client.select_action, o)
                else:
                    (t_remote, a_remote), (t_local, a_local) = timed(client.select_action, o), timed(local.select_action, o)
                if not np.array_equal(a_local, a_remote):
                    raise SystemExit(f"step {i}: the served action {a_remote} differs from the in-process one {a_local}")
                if i >= args.warmup:
                    rows.append((predicts, t_local, t_remote))
                    start = time.perf_counter()
                    client._ws.ping().wait(60)  # the transport alone: a websocket ping answered by the protocol layer
                    pings.append(time.perf_counter() - start)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    codec = []
    for o in obs[: args.requests]:
        start = time.perf_counter()
        unpack(pack({"type": "act", "observation": o}))
        unpack(pack({"action": np.zeros(local.action_dim, np.float32)}))
        codec.append(time.perf_counter() - start)
    return {"rows": rows, "codec": codec, "pings": pings, "bytes": len(pack({"type": "act", "observation": obs[0]})),
            "cameras": len(local.builder.cameras), "stride": local.stride, "state_dim": local.state_dim}  # fmt: skip


def ms(xs: list[float], q: float) -> str:
    return f"{1000 * float(np.quantile(xs, q)):.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_now()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.policy or debug_export(Path(tmp))
        r = measure(path, args)
    lines = ["| steps | n | in-process median / p90 (ms) | websocket median / p90 (ms) | overhead median / p90 (ms) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    kinds = [("every step", lambda p: True), ("predicting a chunk", lambda p: p), ("from the queue", lambda p: not p)]
    for name, keep in kinds:
        rows = [row for row in r["rows"] if keep(row[0])]
        if not rows:
            continue
        local, remote = [row[1] for row in rows], [row[2] for row in rows]
        diff = [b - a for a, b in zip(local, remote, strict=True)]
        lines.append(f"| {name} | {len(rows)} | {ms(local, 0.5)} / {ms(local, 0.9)} | {ms(remote, 0.5)} / "
                     f"{ms(remote, 0.9)} | **{ms(diff, 0.5)}** / {ms(diff, 0.9)} |")  # fmt: skip
    what = "a debug export trained here (3 steps)" if args.policy is None else f"`{args.policy}`"
    command = "benchmarks/serve.py" + (f" --policy {args.policy}" if args.policy else "") + \
        f" --requests {args.requests}" + (" --write-results" if args.write_results else "")  # fmt: skip
    text = f"""{SECTION}

Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} with `.venv/bin/python {command}`.
Machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch thread(s); load average {load_start} at start,
{load_now()} at the end. robofm at {robofm_revision()}.

{what}: {r["cameras"]} camera(s) sent at {args.image_size}x{args.image_size}, state of {r["state_dim"]}, stride
{r["stride"]} (a chunk predicted every {r["stride"]} steps); {args.requests} steps on each side after {args.warmup}
of warm-up, interleaved; the served actions equal the in-process ones at every step. The server is
`robofm-serve policy=... port=0` in its own process on 127.0.0.1 (with {args.threads} thread(s)), as a robot's
control loop would reach it; the overhead is msgpack, two loopback websocket frames and the hand-offs between the
server's event loop and its inference thread. A request is {r["bytes"]:,} bytes; msgpack encoding and decoding of a
request and its reply alone: median {ms(r["codec"], 0.5)} ms, p90 {ms(r["codec"], 0.9)} ms; a websocket ping's round
trip (the transport alone): median {ms(r["pings"], 0.5)} ms, p90 {ms(r["pings"], 0.9)} ms. Overhead: the served
call's time minus the in-process call's at the same step.

{chr(10).join(lines)}
"""
    publish(SECTION, text, args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
