"""``python -m utils.report``: the name the report had before it moved to ``analysis.report``."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("analysis.report", run_name="__main__", alter_sys=True)
