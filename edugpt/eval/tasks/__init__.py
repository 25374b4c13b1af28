"""lm-eval task definitions shipped with edugpt; point lm-eval at this folder with `--include_path edugpt/eval/tasks`.

Imports nothing: the model card (edugpt.report, shipped in the Space) takes the local task's name from here without
loading lm-eval or edugpt.eval's other modules."""

# edugpt's offline stand-in (hellaswag_local.yaml here): HellaSwag's scoring over a local jsonl file. Its numbers are
# never presented as HellaSwag's nor put in the model-index.
LOCAL_HELLASWAG_TASK = "hellaswag_local"
