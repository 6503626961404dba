"""Generation time while other processes keep cores busy: every core's threads against the default thread count.

On a shared machine a torch thread that shares its core with another busy process holds up every parallel region (and
two OpenMP programs spinning on the same cores make it worse); the default (``vidiff.utils.threads.default_threads``:
the cores idle at start) avoids it. Each timing is one ``vidiff generate`` process with the embedded text-to-video model
(the sampling time it prints, model load excluded); the load is another torch process multiplying matrices with 1 thread
and then with every core.

    python benchmarks/threads_under_load.py [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from vidiff.utils.threads import usable_cores

LOAD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""


def _generate(steps: int, threads: int | None, out: str) -> float:
    """Seconds of sampling and decoding, as ``vidiff generate`` reports them."""
    cmd = [sys.executable, "-m", "vidiff.cli", "generate", "a blue square moving up", "--steps", str(steps), "-o", out]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(re.search(r" in ([0-9.]+) s", done.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per generation (default 10)")
    args = parser.parse_args()
    cores = usable_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "v.mp4")
        _generate(1, 1, out)  # warm the file cache
        for load_threads in (0, 1, cores):
            load = None
            if load_threads:
                load = subprocess.Popen([sys.executable, "-c", LOAD, str(load_threads)])
                time.sleep(3.0)  # past torch's import, into the busy loop
            try:
                all_cores = _generate(args.steps, cores, out)
                default = _generate(args.steps, None, out)
            finally:
                if load is not None:
                    load.kill()
                    load.wait()
            rows.append((load_threads, all_cores, default))
    print(f"{cores} usable cores, {args.steps} DDIM steps, embedded shapes_t2v, sampling + decoding time")
    print(f"{'other process':<28}{f'--threads {cores} (s)':>18}{'default (s)':>14}{'ratio':>8}")
    for load_threads, all_cores, default in rows:
        label = f"torch, {load_threads} thread(s)" if load_threads else "none (idle machine)"
        print(f"{label:<28}{all_cores:>18.1f}{default:>14.1f}{all_cores / default:>7.1f}x")


if __name__ == "__main__":
    main()
