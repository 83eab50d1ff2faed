"""ConverterService and worker: HF DBRX -> TensorRT-LLM checkpoint."""
