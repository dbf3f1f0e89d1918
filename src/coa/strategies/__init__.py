"""Strategies by name. The built-ins are imported on first lookup (see `STRATEGIES`), and
packages add more through the `chainofagents.strategies` entry point group."""

from coa.session import Session
from coa.strategies.base import STRATEGIES, Options, Strategy, get_strategy, register

__all__ = ["STRATEGIES", "Options", "Session", "Strategy", "get_strategy", "register"]
