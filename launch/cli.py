"""The one command-line wrapper of every proxylab command (`python -m launch.<cmd>`, `python -m benchmarks.<cmd>`).

Every command is an absl app: flags are absl flags, logs are absl logging (proxylab's INFO lines and every
library's warnings on stderr), and a user error (bad flag, unknown config field, bad value, missing data)
prints ONE line `error: ...` on stderr and exits 2, before anything is compiled or written. Bugs still raise with
a traceback.

    cli.run(main, config="file", workdir=True)      --config=FILE.py[:preset] [--config.a.b=v ...] --workdir=DIR
    cli.run(main, config="dict", default_config=c)  --config.a.b=v overrides of `c` (read them back with
                                                    `config_overrides()`; launch.branch starts from another run)
    cli.run(main)                                   no --config (launch.report, launch.eval_length)

Command-specific flags are defined with `absl.flags` in the command module before `cli.run` is called.
"""

from __future__ import annotations

import logging as py_logging
import sys
from pathlib import Path
from typing import Callable

from absl import app, flags, logging

from launch import configs, distributed, mesh as mesh_lib

FLAGS = flags.FLAGS


_ROOT = Path(__file__).resolve().parents[1]
_OWN = tuple(f"{_ROOT / pkg}/" for pkg in ("launch", "models", "optim", "benchmarks", "experiments"))


class _OwnInfoOnly(py_logging.Filter):
    """INFO lines of proxylab's own modules (progress, resume, done); libraries' (jax backends, orbax's one line
    per checkpoint) only from WARNING up."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or record.pathname.startswith(_OWN)


def fail(msg: str) -> None:
    """Prints `error: <first line of msg>` on stderr and exits 2."""
    msg = str(msg).strip()
    print(f"error: {msg.splitlines()[0] if msg else 'invalid arguments'}", file=sys.stderr)
    sys.exit(2)


def config_overrides() -> dict:
    """The `--config.a.b=v` overrides of a `config="dict"` command, as a dotted-key dict."""
    from ml_collections import config_flags

    return config_flags.get_override_values(FLAGS["config"])


def run(
    main: Callable[[list[str]], None],
    *,
    config: str | None = None,
    default_config=None,
    workdir: bool = False,
) -> None:
    """Runs `main(argv)` as an absl app with the flags described in the module docstring.

    `config`: "file" (a required `--config=FILE.py[:preset]`), "dict" (overrides of `default_config`) or None.
    `workdir`: whether `--workdir` is defined and required.
    """
    from ml_collections import config_flags

    if config == "file":
        config_flags.DEFINE_config_file("config", None, "experiment file and preset, e.g. experiments/base.py:tiny")
    elif config == "dict":
        config_flags.DEFINE_config_dict("config", default_config, "--config.a.b=v overrides")
    elif config is not None:
        raise ValueError(f"cli.run(config={config!r}): choose 'file', 'dict' or None")
    if workdir:
        flags.DEFINE_string("workdir", None, "run (or sweep) directory; rerunning the same command resumes it")

    def parse(argv):
        try:
            rest = FLAGS(argv)
        except flags.Error as e:
            fail(str(e))
        except (ValueError, TypeError, AttributeError, KeyError, FileNotFoundError, SyntaxError) as e:  # config files
            fail(f"--config: {e}")
        if config == "file" and FLAGS.config is None:
            fail("--config is required, e.g. --config=experiments/base.py:tiny")
        if workdir and not FLAGS.workdir:
            fail("--workdir is required")
        return rest

    def guarded(argv):
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_OwnInfoOnly())
        mesh_lib.configure_xla_flags()
        try:
            distributed.initialize()
            main(argv)
        except (*configs.USER_ERRORS, FileNotFoundError) as e:
            fail(str(e))

    app.run(guarded, flags_parser=parse)
