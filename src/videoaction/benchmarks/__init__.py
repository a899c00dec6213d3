"""Benchmarks behind `videoaction bench`: each module exposes `run(quick: bool)`."""
