"""``python -m utils.hybrid``: the name the hybrid planner had before it moved to ``analysis.hybrid``."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("analysis.hybrid", run_name="__main__", alter_sys=True)
