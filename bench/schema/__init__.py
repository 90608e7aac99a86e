"""Result files: the declared row schema, durable appends, the run lock, loading with validation and
migrations, and run metadata. Needs pandas, never torch: reports are made from files alone."""
