"""From rows to training data: ``python -m matrix_p2p export``.

The data path of one export: ``read`` the rows files -> the workflow's ``export:``
section becomes a ``View`` (``resolve``) -> ``plan.build``: for each row, ``--where``
(``expr``), its conversation from the assistant's side (``views``), an example in a
format trainers read (``formats``; preference pairs over trials by ``pairs``), its
split by a hash of the row's id (``splits``) -> ``write`` the files, or Parquet shards
with a dataset card (``card``). ``job.export`` runs it all; everything but ``read``,
``resolve``, ``write`` and ``job`` is pure.
"""

from matrix_p2p.export.job import NothingToExport, Request, Result, export

__all__ = ["NothingToExport", "Request", "Result", "export"]
