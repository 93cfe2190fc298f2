"""The distillation pipeline: plain Python that knows nothing of HTTP."""
