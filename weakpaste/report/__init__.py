"""Pictures and tables of a data set: ``viz`` (drawn images and a contact sheet, ground truth
or predictions) and ``stats`` (instances per class, object sizes). No torch.

May import: core, ops, structures, io, bank, evaluate.
"""
