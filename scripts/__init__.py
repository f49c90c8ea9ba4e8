"""Operator and CI command-line tools. Each runs on its own: python -m scripts.<tool> --help."""
