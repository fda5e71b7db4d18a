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
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable

from absl import app, flags, logging

from launch import configs, distributed, mesh as mesh_lib, validate

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


def _config_spec(args: list[str]) -> str | None:
    """The value of `--config=FILE[:preset]` (or `--config FILE`) in `args`, else None."""
    for i, a in enumerate(args):
        if a.startswith("--config="):
            return a.partition("=")[2]
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
    return None


def _check_config_file(spec: str) -> None:
    """One line for a --config that names no readable experiment file (ml_collections fails lazily there)."""
    path = Path(spec.partition(":")[0])
    if not path.exists():
        fail(f"--config={spec}: no such file {path} (e.g. --config=experiments/base.py:tiny)")
    if not path.is_file():
        fail(f"--config={spec}: {path} is not a file; give an experiment file, e.g. experiments/base.py:tiny")


def _one_line(msg: str) -> str:
    """The line of an error message that says what is wrong: a traceback's last line, else the first line."""
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return lines[-1]
    return lines[0] if lines else "invalid arguments"


def _parse_error(e: Exception, argv: list[str], default_config) -> str:
    """The message of a failed flag parse: an unknown `--config.` field with the closest known one, else the
    reason of the failure (of the config file, or of an override's value) on one line."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    base = default_config
    if base is None and overrides:
        try:  # the config file without the overrides: which override names no field
            base = FLAGS["config"].parser.parse(_config_spec(argv[1:]))
        except Exception:  # noqa: BLE001 - the file itself failed; its reason follows
            base = None
    if base is not None:
        known = configs.flatten(base)
        sections = {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}
        for o in overrides:
            key = o.partition("=")[0][len("--config."):]
            if key not in known and key not in sections:
                return f"unknown field {key}{validate.did_you_mean(key, known)} (--config.{key})"
    if isinstance(e, SyntaxError):
        return f"--config: syntax error in {e.filename}, line {e.lineno}: {e.msg}"
    msg = re.sub(r"^\w+(Error|Exception): ", "", _one_line(str(e)))
    spec = _config_spec(argv[1:])
    return msg if msg.startswith(("flag --", "--")) else f"--config={spec}: {msg}" if spec else msg


def check_workdir(workdir: str) -> None:
    """A --workdir that is a file or lies under a file is one line, not a traceback at the first write."""
    path = Path(workdir).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                fail(f"--workdir={workdir}: {p} is a file, not a directory; choose another --workdir")
            return


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
        try:  # reads the --config.a.b=v overrides of sys.argv at once: an unknown field fails here
            config_flags.DEFINE_config_dict("config", default_config, "--config.a.b=v overrides")
        except Exception as e:  # noqa: BLE001 - ml_collections raises KeyError/AttributeError/TypeError
            fail(_parse_error(e, sys.argv, default_config))
    elif config is not None:
        raise ValueError(f"cli.run(config={config!r}): choose 'file', 'dict' or None")
    if workdir:
        flags.DEFINE_string("workdir", None, "run (or sweep) directory; rerunning the same command resumes it")

    def parse(argv):
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        if config == "file":
            spec = _config_spec(argv[1:])
            if spec is None and overrides:
                fail(f"{overrides[0].partition('=')[0]} overrides a config: give --config=FILE.py[:preset] first, "
                     "e.g. --config=experiments/base.py:tiny")
            if spec is not None:
                _check_config_file(spec)
        try:
            rest = FLAGS(argv)
            if config == "file" and FLAGS.config is not None:
                FLAGS.config.keys()  # a config file that failed to load raises only when first used
        except Exception as e:  # noqa: BLE001 - flags, and whatever the config file's own code raised
            fail(_parse_error(e, argv, default_config if config == "dict" else None))
        if config == "file" and FLAGS.config is None:
            fail("--config is required, e.g. --config=experiments/base.py:tiny")
        if workdir:
            if not FLAGS.workdir:
                fail("--workdir is required")
            check_workdir(FLAGS.workdir)
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
        except OSError as e:  # a full disk, an unwritable directory: the user's environment, not a bug
            print(f"error: {e.filename}: {e.strerror or e}" if e.filename else f"error: {e}", file=sys.stderr)
            sys.stderr.flush()
            # not sys.exit: atexit flushes (TensorBoard's writer, orbax's pending tasks) would print tracebacks
            # against the same filesystem; what is on disk is what a kill leaves, which a rerun resumes exactly
            os._exit(2)
        except Exception:  # noqa: BLE001 - anything else is a bug: say so under its traceback
            traceback.print_exc()
            print(f"error: this is a bug in proxylab ({Path(sys.argv[0]).name}), not in your input; please report it "
                  "with the traceback above", file=sys.stderr)
            sys.exit(1)

    app.run(guarded, flags_parser=parse)
