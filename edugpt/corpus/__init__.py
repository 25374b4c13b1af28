"""Prepared data: sources (sources), the document-ID split (split), tokenize (tokens), pack (pack), layout + manifest
(layout, manifest), install/swap (install), verify (verify), and the executors: one machine (local) or datatrove tasks
(datatrove, datatrove_work, datatrove_tasks, datatrove_merge). Arrays straight to a prepared dataset: synthetic."""
