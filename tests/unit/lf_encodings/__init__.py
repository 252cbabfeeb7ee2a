"""LLaMA-Factory encodings for the encoding tests, and the script that writes them."""
