"""Evaluation: lm-eval on checkpoints, in-loop HellaSwag, the local HellaSwag-format task."""
