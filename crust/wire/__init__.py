"""Sans-IO codecs: byte primitives, frame boundaries and crust's message table."""
