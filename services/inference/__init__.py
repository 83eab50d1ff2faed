"""InferenceService: MPI world, scheduler, paged KV cache."""
