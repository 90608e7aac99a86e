"""What a sweep measures: cases, presets and the suites (attention layers, whole models) behind one protocol."""
