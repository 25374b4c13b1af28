"""Prepared data: sources, the document-ID split, tokenize, pack, layout + manifest, install/swap, verify, executors."""
