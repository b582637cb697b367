"""The ``expertsteer`` command line: one module per command group, typed arguments in ``args``.

``main`` holds the Typer ``app`` (the ``expertsteer`` entry point) and the error policy; each
command module registers its commands on it when imported (in this order in ``--help``).
"""

from . import (
    evaluate,  # noqa: F401  (`demo`, `eval`)
    export,  # noqa: F401  (`export`, `import-gguf`)
    fit,  # noqa: F401  (`fit`)
    generate,  # noqa: F401  (`generate`)
    models,  # noqa: F401  (registers `models`)
    screen,  # noqa: F401  (`screen`)
    serve,  # noqa: F401  (`serve`)
)
from .main import app

__all__ = ["app"]
