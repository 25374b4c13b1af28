"""Training: callbacks, pretraining and finetuning assembly, chat data, trainer_hooks (every private-API touch)."""
