"""Operator tools run from the checkout: `python -m tools.import_legacy PATH`."""
