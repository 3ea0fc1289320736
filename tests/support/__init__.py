"""Test helpers: database fixtures and shared support code."""
