"""Name -> class registries of binarizers, filled by class decorators (one per kind of binarizer)."""


def registrar(table, kind):
    """A class decorator that adds a class to ``table`` under its ``name``; ``kind`` names it in errors."""
    def register(cls):
        if not cls.name:
            raise ValueError(f"{cls.__name__} needs a name to be registered")
        if table.get(cls.name, cls) is not cls:
            raise ValueError(f"{kind} {cls.name!r} registered twice")
        table[cls.name] = cls
        return cls
    register.__doc__ = f"Class decorator: make a {kind} class available by its ``name``."
    return register
