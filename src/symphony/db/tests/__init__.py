"""Tests of the database boundary itself."""
