"""lit-retrieval."""
