"""The diffusion sampler: schedules, remasking rules and the batched denoising loop."""
