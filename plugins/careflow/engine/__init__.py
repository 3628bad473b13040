"""The journey semantics: what happens to an execution at each node."""
