"""videoaction: video-action models for robot learning (UVA, Diffusion Policy baseline, and more)."""

__version__ = "0.1.0"
