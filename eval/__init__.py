"""Measurement: replay labeled query streams through the real engine and report hits and false hits."""
