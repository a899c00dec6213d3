"""Episode stores, sequence sampling, normalisation and image transforms."""
