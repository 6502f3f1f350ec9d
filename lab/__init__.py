"""The lab: a synthetic world (world.py) and a small Qwen3 pretrained on it (pretrain.py), so that the study runs
with real numbers on a CPU. `python study.py --lab` runs both and the whole study; docs/lab.md says what it shows."""
