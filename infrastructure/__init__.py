"""What lets runs survive and scale, beside the reading path: checkpoint directories and the hub (checkpoint.py),
stopping and resuming (resume.py), data-parallel runs under torchrun (distributed.py), and the compiled decode
step (compiled.py)."""
