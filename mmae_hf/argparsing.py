"""One option style for the entry points: the Trainer's names with underscores, old spellings as aliases.

``train/finetune.py`` and ``train/pretrain.py`` parse dataclasses with `TrainingScriptParser` (an
``HfArgumentParser``): options are spelled like the fields (``--per_device_train_batch_size``,
``--num_train_epochs``, ``--learning_rate``, ``--output_dir``, ``--push_to_hub``, ``--hub_model_id``, ...). Spellings
of earlier versions (dash forms such as ``--per-device-train-batch-size`` and old names such as ``--epochs`` or
``--batch_size``) still work: they are rewritten before parsing and one deprecation line names them all.

Also here: a help formatter that does not print a default twice (or ``(default: None)``), an argparse parser whose
usage errors are one line, and `renamed_fields`, which lets a dataclass keep accepting (and reading) renamed fields.
"""

import argparse
import dataclasses
import functools
import sys
import warnings
from collections.abc import Iterable, Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once: not when the help text already speaks of the default, nor for None / False."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default is None
            or action.default is False
            or action.default in (argparse.SUPPRESS, [])
        ):
            return text
        return super()._get_help_string(action)


def _one_line_error(parser: argparse.ArgumentParser, message: str):
    parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `HelpFormatter` and one-line usage errors (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        _one_line_error(self, message)


def deprecated_spellings(
    argv: Sequence[str], known: Iterable[str], renamed: dict[str, str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Rewrite old option spellings in ``argv``; returns the new argv and the ``(old, new)`` pairs used.

    ``known``: the option strings the parser has (``--output_dir``, ...). ``renamed``: old name -> new name, both
    with underscores and leading dashes (``{"--epochs": "--num_train_epochs"}``). A dash form of a known or renamed
    option (``--output-dir``, ``--batch-size``) is an old spelling too. Values and everything after ``--`` stay.
    """
    known = set(known)
    out, used = [], []
    for index, token in enumerate(argv):
        if token == "--":
            out.extend(argv[index:])
            break
        if not token.startswith("--") or token in known:
            out.append(token)
            continue
        name, sep, value = token.partition("=")
        if name in known:
            out.append(token)
            continue
        underscored = "--" + name[2:].replace("-", "_")
        new = renamed.get(name) or (underscored if underscored in known else renamed.get(underscored))
        if new is None:
            out.append(token)  # unknown: argparse reports it
            continue
        used.append((name, new))
        out.append(new + sep + value)
    return out, used


def _training_script_parser_class():
    """Builds `TrainingScriptParser` on first use: transformers is imported only by the training scripts (the
    dataset tools that share this module stay light)."""
    from transformers import HfArgumentParser

    class TrainingScriptParser(HfArgumentParser):
        """`HfArgumentParser` with the project's conventions (see the module docstring).

        Args:
            dataclass_types: the dataclasses whose fields are the options.
            renamed: old option name -> new option name (``{"--epochs": "--num_train_epochs"}``).
            synonyms: other accepted spellings that are not deprecated (``{"--no_progress": "--disable_tqdm"}``).
            **kwargs: passed to `argparse.ArgumentParser` (``prog``, ``description``, ``epilog``).
        """

        def __init__(
            self,
            dataclass_types,
            renamed: dict[str, str] | None = None,
            synonyms: dict[str, str] | None = None,
            **kwargs,
        ):
            kwargs.setdefault("formatter_class", HelpFormatter)
            super().__init__(dataclass_types, **kwargs)
            self.renamed = dict(renamed or {})
            self.synonyms = dict(synonyms or {})
            self.add_argument(
                "--debug", action="store_true", help="show the full traceback of an error instead of one line"
            )
            self._drop_dash_forms()

        def _drop_dash_forms(self):
            """HfArgumentParser registers ``--a-b`` beside ``--a_b``; the dash forms are rewritten (with a deprecation
            line) before parsing instead, so they are dropped here and the help lists each option once."""
            for action in self._actions:
                keep = [
                    s
                    for s in action.option_strings
                    if not (
                        s.startswith("--") and "-" in s[2:] and "--" + s[2:].replace("-", "_") in action.option_strings
                    )
                ]
                for dropped in set(action.option_strings) - set(keep):
                    self._option_string_actions.pop(dropped, None)
                action.option_strings = keep

        def error(self, message):
            _one_line_error(self, message)

        def parse(self, argv: Sequence[str] | None = None):
            """Parse ``argv`` (default ``sys.argv[1:]``) into the dataclasses; returns ``(*dataclasses, debug)``.

            Old spellings are rewritten and named in one ``warning:`` line on stderr.
            """
            argv = list(sys.argv[1:] if argv is None else argv)
            argv, _ = deprecated_spellings(argv, (), self.synonyms)  # synonyms: rewritten, not reported
            argv, used = deprecated_spellings(argv, self._option_string_actions, self.renamed)
            if used:
                pairs = ", ".join(f"{old} -> {new}" for old, new in dict(used).items())
                print(
                    f"{self.prog}: warning: deprecated option spelling{'s' if len(used) > 1 else ''}: {pairs} "
                    "(the old spellings still work for now)",
                    file=sys.stderr,
                )
            *parsed, rest, unknown = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
            if unknown:
                self.error(f"unrecognized arguments: {' '.join(unknown)}")
            return (*parsed, bool(getattr(rest, "debug", False)))

    return TrainingScriptParser


def __getattr__(name):
    if name == "TrainingScriptParser":
        cls = _training_script_parser_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def renamed_fields(renamed: dict[str, str]):
    """Class decorator for a dataclass whose fields were renamed (``{old: new}``): ``Cls(old=...)`` still works
    (with a `FutureWarning`) and ``obj.old`` reads ``obj.new``. Put it above ``@dataclass``."""

    def decorate(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        missing = set(renamed.values()) - names
        if missing:
            raise TypeError(f"{cls.__name__} has no fields {sorted(missing)}")
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{cls.__name__}: give {new}= or its old name {old}=, not both")
                    warnings.warn(f"{cls.__name__}({old}=...) is deprecated; use {new}=", FutureWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        for old, new in renamed.items():
            setattr(cls, old, property(lambda self, new=new: getattr(self, new), doc=f"Deprecated name of `{new}`."))
        cls.renamed_fields = dict(renamed)
        return cls

    return decorate


__all__ = ["ArgumentParser", "HelpFormatter", "TrainingScriptParser", "deprecated_spellings", "renamed_fields"]  # noqa: F822 (module __getattr__)
