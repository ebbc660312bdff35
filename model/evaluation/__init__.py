"""Evaluations of a frozen RETRO model against index versions: temporal bits-per-byte (``temporal``)."""
