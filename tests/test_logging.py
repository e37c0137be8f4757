"""Log messages go through the ``memplug`` logger; the command line shows them on stderr, once."""

from __future__ import annotations

import logging

from memplug.app.cli import main
from memplug.app.train import train
from train_helpers import tiny_config


def test_training_logs_its_precision_and_data_preparation(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="memplug"):
        train(tiny_config(tmp_path, "train.steps=1", "train.warmup=1"))
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert any(name == "memplug.app.train" and message.startswith("train: precision fp32") for name, message in messages)
    assert any(name == "memplug.data.prepare" and message.startswith("reading code from") for name, message in messages)


def test_command_line_shows_log_messages_on_stderr_once(capsys):
    with capsys.disabled():  # the handler is made while stderr is another stream than the test's
        main(["plugins", "--kind", "encoder"])
    main(["plugins", "--kind", "encoder"])  # a second run adds no second handler
    capsys.readouterr()
    logging.getLogger("memplug.app.train").info("a message")
    logging.getLogger("memplug.app.train").debug("not shown")
    assert capsys.readouterr().err == "memplug: a message\n"
