"""``Plan``: which modules get which specs. Ordered rules, the first match wins.

A rule matches a module by qualified name (``fnmatch`` globs, where ``*`` also crosses dots:
``"vision_encoder.*"``, ``"model.layers.*.mlp.*"``; or the markers ``"<first>"`` / ``"<last>"``,
the first / last quantizable module in model order) and / or by type (a class, or its name in
YAML: ``"Linear"``, ``"nn.Conv2d"``, ``"transformers.pytorch_utils.Conv1D"``; subclasses match).
When both are given both must match. A rule assigns a ``weight``, ``input`` and / or ``output``
spec, or ``skip: true`` (the module stays float). Modules no rule matches stay float.

YAML::

    rules:
    - pattern: vision_encoder.*
      weight: {kind: int, bits: 4, granularity: group, group_size: 32}
    - pattern: fusion.*
      skip: true
    - type: [Linear, Conv2d]
      weight: {kind: int, bits: 8, granularity: channel}
      input: {kind: int, bits: 8, signed: false, symmetric: false}
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from torch import nn

from .spec import Spec, spec_from_dict

__all__ = ["Plan", "Rule", "FIRST", "LAST", "type_name"]

FIRST, LAST = "<first>", "<last>"
_RULE_KEYS = ("pattern", "type", "weight", "input", "output", "skip")
_ROLES = ("weight", "input", "output")

TypeLike = Union[str, type]


def type_name(t: TypeLike) -> str:
    """How a rule stores a module type: torch.nn classes by their name (``"Linear"``), other
    classes by ``module.qualname``; strings as given."""
    if isinstance(t, str):
        if not t:
            raise ValueError("a rule's type name must not be empty")
        return t
    if isinstance(t, type) and issubclass(t, nn.Module):
        if getattr(nn, t.__name__, None) is t:
            return t.__name__
        return f"{t.__module__}.{t.__qualname__}"
    raise TypeError(f"a rule's type must be an nn.Module subclass or its name, got {t!r}")


def _type_matches(module: nn.Module, name: str) -> bool:
    short = name.rsplit(".", 1)[-1]
    for cls in type(module).__mro__:
        if name == cls.__name__ or name == f"{cls.__module__}.{cls.__qualname__}":
            return True
        if name in (f"nn.{short}", f"torch.nn.{short}") and getattr(nn, short, None) is cls:
            return True
    return False


def _as_tuple(value, what: str) -> Tuple:
    if value is None:
        return ()
    if isinstance(value, (str, type)):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise TypeError(f"a rule's {what} must be a string, a type or a list of them, got {value!r}")


@dataclass(frozen=True, init=False)
class Rule:
    """One plan rule: a match (``pattern`` globs and / or ``type``) and what it assigns."""

    pattern: Tuple[str, ...]
    type: Tuple[str, ...]
    weight: Optional[Spec]
    input: Optional[Spec]
    output: Optional[Spec]
    skip: bool

    def __init__(self, pattern: Union[str, Sequence[str], None] = None, type: Union[TypeLike, Sequence[TypeLike], None] = None,
                 weight: Optional[Spec] = None, input: Optional[Spec] = None, output: Optional[Spec] = None,
                 skip: bool = False):
        patterns = _as_tuple(pattern, "pattern")
        for p in patterns:
            if not isinstance(p, str) or not p:
                raise TypeError(f"a rule's pattern must be a non-empty string, got {p!r}")
        types = tuple(type_name(t) for t in _as_tuple(type, "type"))
        if not patterns and not types:
            raise ValueError("a rule needs a pattern, a type or both")
        if not isinstance(skip, bool):
            raise TypeError(f"a rule's skip must be a bool, got {skip!r}")
        for role, spec in (("weight", weight), ("input", input), ("output", output)):
            if spec is not None and not isinstance(spec, Spec):
                raise TypeError(f"a rule's {role} must be a qat Spec (QuantSpec, FloatSpec, ...), got {spec!r}")
        assigns = any(s is not None for s in (weight, input, output))
        if skip and assigns:
            raise ValueError("a rule either skips its modules or assigns specs, not both")
        if not skip and not assigns:
            raise ValueError("a rule must assign a weight, input or output spec, or skip")
        for name, value in (("pattern", patterns), ("type", types), ("weight", weight), ("input", input),
                            ("output", output), ("skip", skip)):
            object.__setattr__(self, name, value)

    def matches(self, name: str, module: nn.Module, first: Optional[str] = None, last: Optional[str] = None) -> bool:
        if self.pattern and not any(_pattern_matches(p, name, first, last) for p in self.pattern):
            return False
        return not self.type or any(_type_matches(module, t) for t in self.type)

    def describe(self) -> str:
        parts = []
        if self.pattern:
            parts.append("pattern " + ", ".join(repr(p) for p in self.pattern))
        if self.type:
            parts.append("type " + ", ".join(self.type))
        return " and ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {}
        if self.pattern:
            d["pattern"] = self.pattern[0] if len(self.pattern) == 1 else list(self.pattern)
        if self.type:
            d["type"] = self.type[0] if len(self.type) == 1 else list(self.type)
        for role in _ROLES:
            spec = getattr(self, role)
            if spec is not None:
                d[role] = spec.to_dict()
        if self.skip:
            d["skip"] = True
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], index: int = 0) -> "Rule":
        where = f"plan rule {index}"
        if not isinstance(d, dict):
            raise ValueError(f"{where}: a rule is a mapping, got {d!r}")
        unknown = [k for k in d if k not in _RULE_KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(_RULE_KEYS)}")
        kwargs = dict(d)
        for role in _ROLES:
            if kwargs.get(role) is not None:
                try:
                    kwargs[role] = spec_from_dict(kwargs[role])
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{where}, key '{role}': {e}") from None
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None

    def __repr__(self) -> str:
        fields = [f"{k}={v!r}" for k, v in (("pattern", self.pattern), ("type", self.type)) if v]
        fields += [f"{r}={getattr(self, r)!r}" for r in _ROLES if getattr(self, r) is not None]
        if self.skip:
            fields.append("skip=True")
        return f"Rule({', '.join(fields)})"


def _pattern_matches(pattern: str, name: str, first: Optional[str], last: Optional[str]) -> bool:
    if pattern == FIRST:
        return name == first
    if pattern == LAST:
        return name == last
    return fnmatchcase(name, pattern)


class Plan:
    """Ordered rules mapping modules to specs; the first matching rule wins.

    ``Plan([Rule("vision_encoder.*", weight=int4), Rule(type=nn.Linear, weight=int8)])``, or
    with dicts: ``Plan([{"pattern": "lm_head", "skip": True}, ...])``. Plans compare equal when
    their rules do, and round-trip through :meth:`to_yaml` / :meth:`from_yaml`.
    """

    def __init__(self, rules: Iterable[Union[Rule, Dict[str, Any]]] = ()):
        parsed: List[Rule] = []
        for i, rule in enumerate(rules):
            if isinstance(rule, Rule):
                parsed.append(rule)
            elif isinstance(rule, dict):
                try:
                    parsed.append(Rule(**rule))
                except (ValueError, TypeError) as e:
                    raise type(e)(f"plan rule {i}: {e}") from None
            else:
                raise TypeError(f"plan rule {i}: expected a Rule or a dict, got {rule!r}")
        self.rules: Tuple[Rule, ...] = tuple(parsed)

    @classmethod
    def uniform(cls, weight: Optional[Spec] = None, input: Optional[Spec] = None, output: Optional[Spec] = None,
                types: Sequence[TypeLike] = ("Linear", "Conv1d", "Conv2d")) -> "Plan":
        """One rule: every module of ``types`` gets the same specs."""
        return cls([Rule(type=list(types), weight=weight, input=input, output=output)])

    def match(self, name: str, module: nn.Module, first: Optional[str] = None,
              last: Optional[str] = None) -> Optional[Rule]:
        """The first rule matching module ``name`` (``first`` / ``last``: the names the
        ``<first>`` / ``<last>`` markers stand for), or None."""
        for rule in self.rules:
            if rule.matches(name, module, first, last):
                return rule
        return None

    # ---- serialization ----

    def to_dict(self) -> Dict[str, Any]:
        return {"rules": [rule.to_dict() for rule in self.rules]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Plan":
        if not isinstance(d, dict):
            raise ValueError(f"a plan is a mapping with a 'rules' list, got {d!r}")
        unknown = [k for k in d if k != "rules"]
        if unknown:
            raise ValueError(f"unknown plan key(s) {unknown}; a plan has only 'rules'")
        rules = d.get("rules") or []
        if not isinstance(rules, list):
            raise ValueError(f"plan 'rules' must be a list, got {rules!r}")
        return cls([Rule.from_dict(r, i) for i, r in enumerate(rules)])

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> "Plan":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"plan YAML does not parse: {e}") from None
        return cls.from_dict({} if data is None else data)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Plan":
        return cls.from_yaml(Path(path).read_text())

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.rules == other.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return "Plan([\n" + "".join(f"    {r!r},\n" for r in self.rules) + "])"
