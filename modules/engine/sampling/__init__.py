"""Atelier's own denoising loop: k-diffusion's calling convention, A1111's trajectories.

Sampler functions follow ``sample_x(model, x, sigmas, extra_args=None, callback=None,
disable=None, ...)`` where ``model(x, sigma, **extra_args)`` returns the denoised latent, so
sampler code written for k-diffusion, A1111, Forge or ComfyUI plugs in unchanged.
"""
