"""What a local Ray runtime costs before the first cell: ``ray.init`` and N tlbench
workers ready (torch, tlbench and the plugins imported, a warm Runner built).

    TLBENCH_OFFLINE=1 python tools/ray_startup.py --workers 2 --repeats 3

Prints one JSON object per repeat (seconds) and the medians.  README "Running on a Ray
cluster" quotes it for the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def once(workers: int) -> dict:
    import ray

    from tlbench.plugins import registry
    from tlbench.run.executors.ray_cluster import CellWorker

    os.environ.setdefault("RAY_worker_niceness", "0")  # as tlbench's own local runtime
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    remote = ray.remote(CellWorker).options(num_cpus=1, max_concurrency=2)
    actors = [
        remote.remote(registry.get_plugin_manager, "cpu", None, False, 1) for _ in range(workers)
    ]
    ray.get([a.where.remote() for a in actors])
    t2 = time.perf_counter()
    for actor in actors:
        ray.kill(actor)
    ray.shutdown()
    t3 = time.perf_counter()
    return {
        "init": round(t1 - t0, 2),
        "workers_ready": round(t2 - t1, 2),
        "total": round(t2 - t0, 2),
        "shutdown": round(t3 - t2, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        runs.append(once(args.workers))
        print(json.dumps(runs[-1]), flush=True)
    medians = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    print(json.dumps({"workers": args.workers, "median": medians}))


if __name__ == "__main__":
    main()
