"""Problem definitions: models that flexnas searches plans for.

``problems`` imports ``flexnas``, never the reverse; problems reach the CLI through
the ``flexnas.problems`` entry-point group declared in ``pyproject.toml``.
"""
