"""The application: training, evaluation, checkpoints, configuration, distribution, reports and
the ``memplug`` command line. Nothing in the core imports this package."""
