"""Reference (training-form) layers, one paper a file, state_dict-compatible with the official code."""
