"""Tests of tuneforge.templates (a package so that helpers import relatively)."""
