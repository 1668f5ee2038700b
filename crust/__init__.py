"""crust: reliable, encrypted peer-to-peer connections with NAT traversal."""
from ._version import __version__
