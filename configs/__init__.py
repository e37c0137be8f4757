"""The example experiment configs (``*.toml``), installed as ``memplug.configs``.

``memplug init`` writes them into a folder of your choice (default ``configs/``), so the
commands of the documentation (``memplug train configs/default.toml``) run from a wheel install
as they do from a source checkout.
"""
