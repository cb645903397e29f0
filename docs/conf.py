"""Sphinx configuration of the flask-ias-pkce documentation.

The configuration table and the time bounds are generated from the code
(:data:`flask_ias_pkce.constants.CONFIG_DEFAULTS`, ``CONFIG_DOCS`` and
:class:`flask_ias_pkce.transport.HttpPolicy`), so the documentation cannot drift from it.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import flask_ias_pkce
from flask_ias_pkce.constants import CONFIG_DEFAULTS, CONFIG_DOCS
from flask_ias_pkce.transport import HttpPolicy

project = "flask-ias-pkce"
author = "the flask-ias-pkce authors"
copyright = "the flask-ias-pkce authors"
release = flask_ias_pkce.__version__
version = release

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"flask-ias-pkce {release}"
nitpicky = False


def _default(value: Any) -> str:
    if value is None:
        return "from the binding, or unset"
    return f"``{value!r}``"


class ConfigTable(SphinxDirective):
    """``.. ias-pkce-config::``: every configuration key, its default and its meaning."""

    def run(self) -> list[nodes.Node]:
        missing = sorted(set(CONFIG_DEFAULTS) - set(CONFIG_DOCS))
        if missing:
            raise self.error(f"CONFIG_DOCS has no description of {', '.join(missing)}")
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 20 50", ""]
        lines += ["   * - key", "     - default", "     - meaning"]
        for key, default in CONFIG_DEFAULTS.items():
            lines += [
                f"   * - .. _config-{key}:",
                "",
                f"       ``{key}``",
                f"     - {_default(default)}",
                f"     - {CONFIG_DOCS[key]}",
            ]
        return self.parse_lines(lines)

    def parse_lines(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="CONFIG_DEFAULTS"), 0, container)
        return list(container.children)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _bound_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, *_: Any) -> Any:
    """``:ias-pkce-bound:`call``` and ``:ias-pkce-bound:`miss```: the time bounds of the
    default configuration, computed by :meth:`HttpPolicy.worst_case_seconds`."""
    timeout = CONFIG_DEFAULTS["IAS_PKCE_TIMEOUT"]
    policy = HttpPolicy(timeout=timeout, retries=CONFIG_DEFAULTS["IAS_PKCE_RETRIES"])
    one_call = policy.worst_case_seconds()
    values = {"call": one_call, "miss": 6 * one_call}
    if text not in values:
        message = inliner.reporter.error(f"unknown bound {text!r}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]
    return [nodes.literal(rawtext, _seconds(values[text]))], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("ias-pkce-config", ConfigTable)
    app.add_role("ias-pkce-bound", _bound_role)
    return {"parallel_read_safe": True}
