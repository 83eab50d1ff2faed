"""The pipeline stages, one package each: tokenizer, converter, builder, inference, gateway."""
