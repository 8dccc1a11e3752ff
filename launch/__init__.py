"""The flag-to-object wiring of ``main.py``: with ``opts`` and ``main.py``, the only code that reads the parsed
flags. It turns them into devices, data, networks, optimizers, the run facts (``build``), the run folders
(``folders``) and the model tools (``tools``); it never changes the namespace it is given."""
