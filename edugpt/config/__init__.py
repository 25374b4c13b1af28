"""Arguments: the YAML recipe + CLI parser and every argument dataclass of the entry points."""
