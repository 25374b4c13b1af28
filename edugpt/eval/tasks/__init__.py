"""lm-eval task definitions shipped with edugpt; point lm-eval at this folder with `--include_path edugpt/eval/tasks`."""
