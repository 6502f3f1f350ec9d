"""Tools around the project: the tiny random checkpoint (tiny.py), speed against transformers (bench.py), and the
CUDA check (gpu_check.py). Run them as modules: `python -m tools.tiny ckpt/tiny`."""
