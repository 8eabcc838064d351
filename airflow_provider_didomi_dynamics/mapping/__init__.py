"""The consent mapping engine: pure pandas/pyarrow, no I/O.

``grammar`` names Didomi consent fields as flat columns, ``flatten`` turns consent users into one row each,
``forward`` maps rows to Dataverse contact attributes and ``reverse`` rebuilds Didomi consent events from contacts.
"""
