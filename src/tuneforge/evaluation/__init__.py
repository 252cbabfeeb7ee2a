"""Evaluation: generation metrics for predictions (BLEU, ROUGE, token accuracy).

Submodules are imported by what uses them, so that importing this package stays cheap.
"""
