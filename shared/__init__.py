"""Code every stage uses: model math, config, mapping, checkpoint IO, job store, gRPC plumbing."""
