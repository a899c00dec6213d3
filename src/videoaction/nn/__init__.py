"""Neural-network building blocks shared by the model families (tokenizers, text encoders, diffusion heads)."""
