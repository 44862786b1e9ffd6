"""Scoring a plan: image features, FID/KID/paired measures, MACs, wall-clock (DESIGN.md, sections 4-5).

``features`` registers feature extractors with torch-fidelity; ``measures`` turns features into
scores through torch-fidelity's public statistics functions; ``macs`` counts MACs per step kind
with fvcore; ``store`` keeps each plan's features on disk (and sampler prefixes in memory);
``evaluator`` puts them together for one plan. May import: ``flexnas.models`` and below.
"""
