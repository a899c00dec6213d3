"""Training entry points: the model trainer and the stage-0 small-autoencoder trainer."""
