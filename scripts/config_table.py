"""Print the README's configuration table from `shared/config.py` (keys, defaults,
environment variables and the docstring under each field), so the two never drift apart:
`python scripts/config_table.py`. tests/test_config.py checks the README against it."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared import config  # noqa: E402


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a class in shared/config.py."""
    tree = ast.parse(Path(config.__file__).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs, body = {}, node.body
    for field, doc in zip(body, body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def rows() -> list[str]:
    out = ["| key | default | environment | meaning |", "| --- | --- | --- | --- |"]
    defaults = config.Config()
    for section, cls in config._sections().items():
        docs = field_docs(cls)
        for name in cls.__struct_fields__:
            value = getattr(getattr(defaults, section), name)
            env = f"{config.ENV_PREFIX}{section.upper()}_{name.upper()}"
            out.append(f"| `{section}.{name}` | `{json.dumps(value)}` | `{env}` | {docs.get(name, '')} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
