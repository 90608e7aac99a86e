"""Write docs/schema.md from the declared schema and this code's method identifiers (``python -m
tools.schema_docs``); tests/test_schema.py fails while the committed page differs from what this writes."""

from bench.core.methods import measurement_methods
from bench.schema.docs import DOCS_PATH, schema_markdown

if __name__ == "__main__":
    DOCS_PATH.write_text(schema_markdown(measurement_methods()))
    print(f"wrote {DOCS_PATH}")
