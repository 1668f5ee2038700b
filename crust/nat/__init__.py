"""Sans-IO NAT traversal: probe datagrams, external-address voting and UDP hole punching."""
