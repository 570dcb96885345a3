import shared  # noqa: F401  (first: it sets numpy's thread count before numpy loads)
