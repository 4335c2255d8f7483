"""The contract's nouns, settings and rules as pure values and functions: no I/O."""
