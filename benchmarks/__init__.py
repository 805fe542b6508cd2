"""Speed and memory benchmarks of seqgym and the agents; run each as ``python -m benchmarks.<name>``."""
