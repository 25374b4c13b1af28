"""Stand-ins for what the tests cannot reach offline."""
