"""Diffusion Policy, CNN variant (DP-C): the baseline family (presets ``dp-tiny``, ``dp-base``)."""
