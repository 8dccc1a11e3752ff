"""Tools that read finished runs and checkpoints: the results report (tables and figures), the hybrid
planner, and the binarization-error measurements they and ``main.py`` print."""
