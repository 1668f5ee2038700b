"""Sans-IO NAT traversal: probe datagrams, external-address voting, UDP hole punching and UPnP leases."""
