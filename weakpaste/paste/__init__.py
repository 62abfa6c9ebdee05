"""Pasting segments onto backgrounds into a COCO or LVIS set (EM-Paste §3.3).

``plan`` draws every random choice (a plan is data); ``render`` turns a plan into pixels and
annotations deterministically; ``run`` is the stage.

May import: core, ops, structures, io, bank.
"""
