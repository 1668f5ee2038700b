"""The shell's wiring: the engine's driver, its streams, flow control across threads, the LAN beacon's sockets.

``driver`` is the one pump between the sans-IO engine and everything that
does I/O; ``streams`` turns its stream effects into sockets; ``flow`` holds
the send gates and the receive backlog, the only protocol state user threads
and the reactor share; ``lan`` moves the LAN beacon's datagrams.
``crust.service`` puts them together behind the public API.

Nothing is imported here, so ``tests/simnet.py`` can use the driver without
pulling in sockets.
"""
