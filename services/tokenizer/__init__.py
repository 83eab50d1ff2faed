"""TokenizerService: DBRX's tiktoken encoding, offline."""
