"""The error tree lives in one module, and its docstring draws it as it is."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import broker
import broker.errors as errors


def _tree() -> list[str]:
    """The drawing of the BrokerError subclasses, as the module docstring holds it."""
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.BrokerError) and c.__module__ == errors.__name__
    ]
    lines: list[str] = []

    def walk(cls: type[errors.BrokerError], prefix: str, last: bool, root: bool) -> None:
        label = "BrokerError" if root else f"{cls.__name__} ({cls.reason}, {cls.kind.name})"
        lines.append(label if root else prefix + ("└── " if last else "├── ") + label)
        children = sorted((c for c in classes if c.__bases__[0] is cls), key=lambda c: c.__name__)
        for i, child in enumerate(children):
            walk(
                child,
                prefix if root else prefix + ("    " if last else "│   "),
                i == len(children) - 1,
                False,
            )

    walk(errors.BrokerError, "", True, True)
    return lines


def test_the_docstring_draws_the_tree() -> None:
    drawing = "\n".join("    " + line for line in _tree())
    assert drawing in (errors.__doc__ or ""), "redraw the tree in broker/errors.py:\n" + drawing


def test_every_broker_error_is_defined_in_broker_errors() -> None:
    elsewhere = []
    for info in pkgutil.walk_packages(broker.__path__, "broker."):
        if info.name == errors.__name__ or info.name.startswith(
            ("broker._proto", "broker.__main__")
        ):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, errors.BrokerError) and cls.__module__ == info.name:
                elsewhere.append(f"{info.name}.{name}")
    assert not elsewhere, f"define these in broker/errors.py: {elsewhere}"
