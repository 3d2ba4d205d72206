"""Start-up time of the CLI: `--help` of every command, `c3dfeat models` (warm and cold cache).

    .venv/bin/python scripts/bench_cli.py [--repeat 5]

Each command runs in a fresh interpreter, the commands interleaved round by round (so a change
in machine load hits all of them alike); prints the median and min wall time per command, the
`import torch` time as the floor a torch-using command cannot go below, and the load average.
Targets (issue 9): every --help <= 0.5 s, `c3dfeat models` <= 2 s.

Measured (3 rounds, the shared 2-core machine at load average 15, medians): `import torch` 4.49 s;
every --help 0.43-0.50 s (no torch imported: 0.06 s on the idle machine); `c3dfeat models` with
the facts cache 4.74 s, 1.06x the torch floor; with an empty cache 14.9 s (every model built on
the meta device and its FLOPs counted). At load average 6.7: torch 3.00 (min 1.89) s; --help
0.28-0.33 (min 0.17-0.22) s; models warm 3.16 (min 1.51) s, --json 2.50 (min 1.49) s; cold 8.0 s.
Before issue 9 (idle machine): --help 2 s, models 6-9 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

PY = sys.executable
CLI = [PY, "-m", "c3dfeat"]


def _time(cmd: List[str], env: Optional[Dict[str, str]] = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cold_home = tempfile.mkdtemp(prefix="c3dfeat_bench_cache_")
    cases: Dict[str, List[str]] = {
        "import torch (floor)": [PY, "-c", "import torch"],
        "c3dfeat --help": CLI + ["--help"],
        "c3dfeat extract --help": CLI + ["extract", "--help"],
        "c3dfeat linear-eval --help": CLI + ["linear-eval", "--help"],
        "c3dfeat pca --help": CLI + ["pca", "--help"],
        "c3dfeat tsne --help": CLI + ["tsne", "--help"],
        "c3dfeat weights --help": CLI + ["weights", "--help"],
        "c3dfeat export --help": CLI + ["export", "--help"],
        "c3dfeat models (warm cache)": CLI + ["models"],
        "c3dfeat models --json (warm cache)": CLI + ["models", "--json"],
        "c3dfeat models (cold cache)": CLI + ["models"],
    }
    _time(CLI + ["models"])  # fill the user's cache once: "warm" means the second run on
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(args.repeat):
        for name, cmd in cases.items():
            env = None
            if "cold" in name:  # an empty cache directory each time: the first run after install
                env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp(dir=cold_home))
            times[name].append(_time(cmd, env))
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; "
          f"{args.repeat} rounds")
    width = max(map(len, cases))
    print(f"{'command':{width}}  median s    min s")
    for name, ts in times.items():
        print(f"{name:{width}}  {statistics.median(ts):8.3f} {min(ts):8.3f}")


if __name__ == "__main__":
    main()
