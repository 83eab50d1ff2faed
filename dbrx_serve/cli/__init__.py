"""The `dbrx` command."""
