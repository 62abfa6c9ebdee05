"""The offline demo: ``synthetic`` draws labelled scenes, ``run`` runs the whole pipeline on them.

May import: core, ops, structures, io, models, bank, evaluate, mine, paste, backgrounds, train, report.
"""
