"""Glue between qsr_plugin and the model zoos it serves (BasicSR, timm)."""
