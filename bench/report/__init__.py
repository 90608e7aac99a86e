"""Reports from result files alone: tables and plots, each registered once, and the report folder."""
