"""Copy the Kubernetes JSON schemas that deploy/kubernetes/ uses into
tests/data/kubernetes-schemas/, from a downloaded `kubernetes-validate` wheel (Apache-2.0),
so tests/test_kubernetes.py validates the rendered manifests offline.

    python scripts/kubernetes_schemas.py kubernetes_validate-1.37.0-py3-none-any.whl

Only the kinds in KINDS are kept, and of the shared definitions only those their schemas
reach (the full file is 1.3 MB); the strict variant, so an unknown field is an error.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

KUBERNETES_VERSION = "v1.32.0"  # the kubectl this repository's CI installs renders for 1.32
KINDS = ("configmap-v1", "service-v1", "deployment-apps-v1", "statefulset-apps-v1", "job-batch-v1")
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "kubernetes-schemas"
REF = re.compile(r'"\$ref":\s*"[^"#]*#/\$defs/([^"]+)"')


def main(wheel: str) -> None:
    folder = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES_VERSION}-local-strict"
    with zipfile.ZipFile(wheel) as archive:
        kinds = {kind: archive.read(f"{folder}/{kind}.json").decode() for kind in KINDS}
        definitions = json.loads(archive.read(f"{folder}/_definitions.json"))
        licence = next(n for n in archive.namelist() if n.endswith("licenses/LICENSE"))
        (OUT / "LICENSE").write_bytes(archive.read(licence))
    reached: set[str] = set()
    todo = [name for text in kinds.values() for name in REF.findall(text)]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(REF.findall(json.dumps(definitions["$defs"][name])))
    definitions["$defs"] = {name: definitions["$defs"][name] for name in sorted(reached)}
    target = OUT / KUBERNETES_VERSION
    target.mkdir(parents=True, exist_ok=True)
    for kind, text in kinds.items():
        (target / f"{kind}.json").write_text(text)
    (target / "_definitions.json").write_text(json.dumps(definitions, indent=1, sort_keys=True) + "\n")
    print(f"{len(kinds)} kinds, {len(reached)} definitions -> {target}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
