"""Reading rows: variant labels, pairs with references, and comparisons of runs. Pandas only, no torch."""
