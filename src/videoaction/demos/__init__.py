"""Scripted demonstrations: the PushT planning expert, PushT-M, Metaworld experts -> episode stores."""
