"""Strict YAML for parameters files and overrides: a key given twice in one mapping is an error
(PyYAML would silently keep the last, so a second `lr:` further down a file would quietly win),
and every error can be told as (line, problem) for a message that names the fix (config.py)."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise DuplicateKey(None, None, f"{key} is given twice (first on line "
                                   f"{first_line[key]}); keep one", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load(text: str) -> Any:
    """The YAML value of `text`; raises yaml.YAMLError (DuplicateKey for a repeated key)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def problem(e: yaml.YAMLError) -> tuple[str, str]:
    """(' line N', the problem in words) of a YAML error; the line is the problem's."""
    if not isinstance(e, yaml.MarkedYAMLError):  # a reader error: a character YAML refuses
        return "", str(e).splitlines()[0]
    line = f" line {e.problem_mark.line + 1}" if e.problem_mark else ""
    context = f" ({e.context})" if e.context else ""
    if context and e.context_mark and e.context_mark.line != e.problem_mark.line:
        context = f" ({e.context} that starts on line {e.context_mark.line + 1})"
    return line, f"{e.problem}{context}"
