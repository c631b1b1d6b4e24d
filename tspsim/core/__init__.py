"""Foundations every layer may use: errors, units, the name registry, bounded file reads and atomic writes, YAML."""
