"""The model: GPT-2 config and FLOPs, the tokenizer, the chat template, the one saved-model check."""
