"""Time to bootstrap and to connect() between two Services on loopback.

    python bench/connect.py [--runs 200]

Each run makes a fresh connection (then disconnects and waits until both sides saw on_lost),
so the figures include the TCP connect, the Noise XX handshake and the exchange
(BootstrapRequest/Granted, or ConnectRequest/ChooseConnection).  Prints medians and p99 and
a JSON line.  Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import crust

WAIT = 10.0  # seconds any single step may take


def config(**extra: object) -> crust.Config:
    return crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, enable_upnp=False,
                        disable_external_reachability_requirement=True, peer_exchange=False, **extra)  # type: ignore[arg-type]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(runs: int) -> dict[str, dict[str, float]]:
    a = crust.Service(config())
    a_ep = a.start_listening()[0]
    b = crust.Service(config(hard_coded_contacts=[str(a_ep)]))
    b.start_listening()
    gone = {svc.id: threading.Event() for svc in (a, b)}
    a.on_lost(lambda peer: gone[peer].set())
    b.on_lost(lambda peer: gone[peer].set())

    def drop() -> None:
        for event in gone.values():
            event.clear()
        b.disconnect(a.id)
        if not (gone[a.id].wait(WAIT) and gone[b.id].wait(WAIT)):
            raise SystemExit("a disconnect was not reported in time")

    results: dict[str, list[float]] = {"bootstrap": [], "connect": []}
    try:
        with ThreadPoolExecutor(2) as pool:
            for _ in range(runs):
                start = time.perf_counter()
                b.bootstrap(timeout=WAIT)
                results["bootstrap"].append(time.perf_counter() - start)
                drop()
                a_info, b_info = a.prepare_connection_info(), b.prepare_connection_info()
                start = time.perf_counter()
                calls = [pool.submit(a.connect, a_info, b_info.to_pub(), WAIT),
                         pool.submit(b.connect, b_info, a_info.to_pub(), WAIT)]
                for call in calls:
                    call.result(WAIT + 5)
                results["connect"].append(time.perf_counter() - start)
                drop()
    finally:
        a.close()
        b.close()
    return {name: {"median_ms": statistics.median(xs) * 1e3, "p99_ms": percentile(xs, 0.99) * 1e3, "runs": len(xs)}
            for name, xs in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    stats = measure(args.runs)
    print(f"{'operation':<10} {'median ms':>10} {'p99 ms':>8}  runs")
    for name, row in stats.items():
        print(f"{name:<10} {row['median_ms']:>10.2f} {row['p99_ms']:>8.2f}  {row['runs']}")
    print(json.dumps({"bench": "connect", "python": sys.version.split()[0], "results": stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
