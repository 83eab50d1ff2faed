"""BuilderService and worker: checkpoint -> engine directory."""
