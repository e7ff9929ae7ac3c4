#!/usr/bin/env python3
"""Checks every shipped config against config/tollgate.schema.json (what
editors use through the `yaml-language-server: $schema=` modeline), so the
schema accepts what the gateway accepts. Each file must carry the modeline.

    python3 config/check_schema.py [FILE...]

Needs the `jsonschema` and `ruamel.yaml` packages (.ci/run installs
them). ruamel.yaml reads YAML 1.2, as the gateway and editors do (PyYAML's
YAML 1.1 would read `on:` as a boolean).
"""

import glob
import json
import os
import sys

import jsonschema
from ruamel.yaml import YAML

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def main():
    schema = json.load(open(os.path.join(ROOT, "config/tollgate.schema.json")))
    validator = jsonschema.Draft202012Validator(schema)
    # `*.keys.yaml` are API keys files (a list of hashes), not configs.
    files = sys.argv[1:] or sorted(
        f for f in glob.glob(os.path.join(ROOT, "config/*.yaml"))
        + glob.glob(os.path.join(ROOT, "config/examples/*.yaml"))
        + glob.glob(os.path.join(ROOT, "deploy/kubernetes/tollgate.yaml"))
        if not f.endswith(".keys.yaml"))
    failed = False
    for f in files:
        text = open(f).read()
        if "yaml-language-server: $schema=" not in text.splitlines()[0]:
            print(f"{f}: the first line is not the `# yaml-language-server: $schema=...` modeline")
            failed = True
        doc = json.loads(json.dumps(YAML(typ="safe", pure=True).load(text)))
        errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.path])
        for e in errors:
            path = ".".join(str(p) for p in e.path) or "(top)"
            print(f"{f}: {path}: {e.message}")
            failed = True
        if not errors:
            print(f"{f}: valid")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
