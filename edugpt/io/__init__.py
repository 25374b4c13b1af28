"""Files and the network: atomic writes, private files and locks (never through a link), Hub reachability and ids."""
