"""Two crust Services on 127.0.0.1: one sends "hello", the other echoes it back.

Run it with ``python examples/echo.py``; it prints ``echo: hello`` and exits 0.
"""

import dataclasses
import sys
import threading

import crust

config = crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, network_name="echo-example")

with crust.Service(config) as server:

    @server.on_message
    def echo(peer_id: crust.PeerId, data: bytes) -> None:
        server.send(peer_id, b"echo: " + data)  # sending from a callback is fine

    endpoint = server.start_listening()[0]
    client_config = dataclasses.replace(config, hard_coded_contacts=[str(endpoint)])

    with crust.Service(client_config) as client:
        replied = threading.Event()

        @client.on_message
        def show(peer_id: crust.PeerId, data: bytes) -> None:
            print(data.decode())
            replied.set()

        # Blocks until the server lets us in; a Client need not be reachable itself.
        server_id = client.bootstrap(user=crust.CrustUser.CLIENT)
        client.send(server_id, b"hello")
        if not replied.wait(timeout=10):
            sys.exit("no echo within 10 s")
