"""The evolutionary search on pymoo (DESIGN.md, section 6).

``config`` is a search's settings, ``operators`` the genome operators (each overrides one
``_do``), ``candidates`` evaluates genomes through ``flexnas.metrics`` (once per process, with the
evaluation cache of ``runfolder``), ``problem`` is the pymoo ``Problem`` over genomes, ``runner``
composes them with ``pymoo.optimize.minimize`` (checkpoints, progress, Dask).
May import: ``flexnas.metrics`` and below.
"""
