"""NAT traversal, sans-IO: the decisions behind UPnP port mapping, external addresses and hole punching."""
