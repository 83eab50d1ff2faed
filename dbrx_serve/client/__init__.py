"""The Python client SDK: thin wrappers over the generated stubs (no torch)."""
