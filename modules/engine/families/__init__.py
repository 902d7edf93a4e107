"""One module per model family: how to detect, load and run it (see :mod:`.registry`)."""
