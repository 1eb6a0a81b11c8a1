"""The serving engine: many independent requests on one GPU, batched frame by frame (see `api`)."""
