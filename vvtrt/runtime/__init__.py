"""Runtime: runners with one contract for every backend, and the per-frame synthesis loop."""
