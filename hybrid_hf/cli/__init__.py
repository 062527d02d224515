"""The ``hybrid-hf`` command line."""
