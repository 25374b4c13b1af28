"""edugpt: pretrain, evaluate, finetune and publish a GPT-2-class model on FineWeb-Edu with the Hugging Face stack.

The top-level scripts (`prepare_data.py`, `train_hf.py`, `eval_harness.py`, `finetune/`, `publish.py`) are thin
entry points over this package; every reusable piece lives here, one module per concern.
"""

__version__ = "0.1.0"
