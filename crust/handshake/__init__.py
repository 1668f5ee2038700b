"""Sans-IO handshake machines: the secure handshake and the exchanges that follow it."""
