"""Integrations of qsr_plugin with training frameworks (BasicSR)."""
