"""Tokenizer and model loading, patches, and the offline tiny-model builder (`tiny`)."""
