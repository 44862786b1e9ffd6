"""What a search leaves behind: result tables, re-scored fronts and plots (DESIGN.md, section 8).

``results`` writes a run's records, front and chosen plans; ``plots`` draws Pareto fronts and
image grids with matplotlib. May import: ``flexnas.search`` and below.
"""
