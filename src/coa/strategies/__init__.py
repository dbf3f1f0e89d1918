"""Built-in strategies; importing this package registers them by name."""

from coa.strategies import chain  # noqa: F401
from coa.strategies.base import REGISTRY, Strategy, get_strategy, register

__all__ = ["REGISTRY", "Strategy", "get_strategy", "register"]
