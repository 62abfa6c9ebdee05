"""The offline demo: ``synthetic`` draws labelled scenes, ``run`` runs the whole pipeline on
them.

May import: anything but the command line (it runs every stage).
"""
