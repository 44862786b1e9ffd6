"""Plans and the search space: pure data (docs/DESIGN.md, sections 1-3 and 9).

A ``Plan`` says what each base timestep runs (FULL, PARTIAL at a branch, NULL); a
``SearchSpace`` maps genomes to plans and back. Nothing here touches a model or a tensor.
May import: ``flexnas.errors`` only.
"""
