#!/usr/bin/env python
"""Benchmark the attention zoo: ``python run_bench.py --gpu a100`` (see README.md)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
