"""A mesh in three lines: every Service knows only the first, `target_peers` does the rest.

Run it: `python examples/mesh.py` (five Services on 127.0.0.1; prints who each ended up with).
"""

import dataclasses
import sys
import time

import crust

SIZE = 5
config = crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, enable_upnp=False,
                      network_name="mesh-example", target_peers=SIZE - 1)  # the one line that builds the mesh

services = [crust.Service(config)]
try:
    seed = services[0].start_listening()[0]
    for _ in range(SIZE - 1):
        svc = crust.Service(dataclasses.replace(config, hard_coded_contacts=[str(seed)]))
        services.append(svc)
        svc.start_listening()  # a Node: the others bootstrap off it too
        svc.bootstrap()  # knows only the first; peer exchange tells it of the rest
    deadline = time.monotonic() + 20
    while any(len(s.peers()) < SIZE - 1 for s in services):
        if time.monotonic() > deadline:
            sys.exit("the mesh did not form within 20 s")
        time.sleep(0.05)
    for svc in services:
        print(f"{str(svc.id)[:8]}: {sorted(str(p.id)[:8] for p in svc.peers())}")
finally:
    for svc in services:
        svc.close()
