"""`vvtrt bench`: latency, RTF, time to first audio, memory and telemetry per backend, with baselines."""
