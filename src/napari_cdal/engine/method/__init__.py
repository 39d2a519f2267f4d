"""cDAL itself: the noise schedule, the two networks, the model and the sampler."""
