"""The OpenAI-compatible HTTP gateway (FastAPI) over InferenceService and TokenizerService."""
