"""The measurement core: timing and its statistics, memory, accuracy against float64, FLOPs, GPU profiles and
machine facts. It knows nothing of suites, result files or command lines (no pandas, no argparse)."""
