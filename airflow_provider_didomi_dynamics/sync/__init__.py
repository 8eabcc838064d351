"""The sync engines: hooks and frames in, a RunReport out; no BaseOperator, so a ``@task`` can call them too."""
