"""Foundations every step uses: errors, atomic persistence, the workspace layout, safe archives, official assets."""
