"""Result files: the declared row schema, durable appends, the run lock, loading with validation and
migrations, and run metadata. Needs pandas, never torch: reports are made from files alone.

- ``columns``: the declaration of every column (and the tables derived from it), the schema version, the
  method keys a run's metadata names.
- ``files``: results CSVs: header checks, the writer, the run's lock, ``load_results``.
- ``metadata``: run metadata: field types, ``read_metadata``, ``write_metadata``, ``versioned_metadata``.
- ``migrations``: the steps from each schema version to the next, applied by the readers.
- ``storage``: bounded reads and atomic writes; ``errors``: ResultsFormatError and ResultsWarning.
- ``docs``: docs/schema.md, generated from the declaration (``python -m bench.schema.docs``).
"""
