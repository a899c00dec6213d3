"""Scripted experts and demonstration generators (PushT planning expert, Metaworld experts)."""
