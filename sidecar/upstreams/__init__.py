"""One module per upstream kind, each with the same small shape: start, close, health, stats."""
