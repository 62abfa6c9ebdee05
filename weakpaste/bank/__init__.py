"""The segment bank: the on-disk store of cut-out objects that mining writes and paste reads.

* ``format``: file names, the version marker and index lines of a bank folder.
* ``codec``: a segment's crop and mask as bytes (PNG for version 1, WPZ1 for version 2).
* ``store``: ``SegmentBank`` (read, stream, sample) and ``BankWriter`` (append, resume).
* ``from_coco``: the ``bank from-coco`` stage.

May import: core, ops, structures, io.
"""
