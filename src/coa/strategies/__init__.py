"""Built-in strategies; importing this package registers them by name, in this order."""

# isort: off
from coa.strategies import chain, multipath, vanilla, rag, merge, hierarchical, mapreduce  # noqa: F401
# isort: on
from coa.strategies.base import REGISTRY, Strategy, get_strategy, register

__all__ = ["REGISTRY", "Strategy", "get_strategy", "register"]
