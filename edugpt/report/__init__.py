"""Reports: the model card (facts, rows, render) and the plots."""
