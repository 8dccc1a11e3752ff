"""The flag-to-object wiring of ``main.py``: the one place below the command line that reads the parsed
flags, and turns them into devices, data, networks, optimizers, run folders and the compression commands."""
