#!/usr/bin/env python3
"""Writes docs/src/reference.md, the configuration reference, from
config/tollgate.schema.json (which `tollgate schema` derives from the
config types): every key with its type, default and description.

    python3 docs/gen_reference.py           # rewrite docs/src/reference.md
    python3 docs/gen_reference.py --check   # fail when it is stale (.ci/run)
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
OUT = os.path.join(ROOT, "docs/src/reference.md")


def main():
    schema = json.load(open(os.path.join(ROOT, "config/tollgate.schema.json")))
    defs = schema["$defs"]

    def resolve(s):
        while "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[1]
            merged = dict(defs[name])
            merged.update({k: v for k, v in s.items() if k != "$ref"})
            merged["_name"] = name
            s = merged
        return s

    def optional(s):
        """`Option<T>`: anyOf [T, null] → T."""
        alts = s.get("anyOf")
        if alts and len(alts) == 2 and {"type": "null"} in alts:
            inner = dict(next(a for a in alts if a != {"type": "null"}))
            inner.update({k: v for k, v in s.items() if k != "anyOf"})
            return inner
        return s

    def describe_type(s):
        s = optional(s)
        if "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[1]
            d = defs[name]
            if "oneOf" in d and all("const" in o for o in d["oneOf"]):
                return " \\| ".join(f"`{o['const']}`" for o in d["oneOf"])
            if name in ("Duration", "ByteSize", "Text", "Secret", "Workers", "Endpoint", "RateLimitKey",
                        "RetryOn", "ValueMatch"):
                return {"Duration": "duration", "ByteSize": "size", "Text": "text", "Secret": "secret text",
                        "Workers": "`auto` or 1–1024", "Endpoint": "URL or `{ url, weight }`",
                        "RateLimitKey": "key part or list", "RetryOn": "word or status",
                        "ValueMatch": "value or `{ exact \\| regex \\| present }`"}[name]
            return "object"
        t = s.get("type")
        if t == "array":
            return f"list of {describe_type(s.get('items', {}))}"
        if t == "object" and "additionalProperties" in s:
            return f"map of {describe_type(s['additionalProperties'])}"
        if isinstance(t, list):
            return " or ".join(x for x in t if x != "null")
        return t or "value"

    def default(s):
        if "default" not in s:
            return "required" if s.get("_required") else "–"
        v = s["default"]
        if v is None or v == {} or v == []:
            return "none"
        if isinstance(v, dict):
            return "see below"
        return f"`{json.dumps(v)}`" if not isinstance(v, str) else f"`{v}`"

    rows = []

    def walk(s, path):
        s = resolve(optional(s))
        props = s.get("properties", {})
        required = set(s.get("required", []))
        for key, p in props.items():
            p = dict(p)
            p["_required"] = key in required
            full = f"{path}.{key}" if path else key
            desc = (p.get("description") or resolve(optional(p)).get("description", "")).replace("\n", " ")
            rows.append((full, describe_type(p), default(p), desc.replace("|", "\\|")))
            inner = resolve(optional(p))
            if inner.get("type") == "array":
                item = resolve(optional(inner.get("items", {})))
                if item.get("properties"):
                    walk(item, f"{full}[i]")
            elif inner.get("type") == "object" and "additionalProperties" in inner \
                    and isinstance(inner["additionalProperties"], dict):
                val = resolve(optional(inner["additionalProperties"]))
                if val.get("properties"):
                    walk(val, f"{full}.NAME")
            elif inner.get("properties"):
                walk(inner, full)

    walk(schema, "")
    out = ["# Configuration reference", "",
           "Every key of the config file, with its type, default and meaning. This",
           "page is generated from `config/tollgate.schema.json` (`tollgate schema`),",
           "which is derived from the config types, so it cannot drift from what the",
           "gateway reads: `python3 docs/gen_reference.py` rewrites it, and `.ci/run`",
           "fails when it is stale. Editors read the same schema through the",
           "`# yaml-language-server: $schema=...` line at the top of a config.",
           "Unknown keys are errors. Limits that values are checked against are in",
           "the descriptions and in the chapters.", "",
           "| key | type | default | meaning |", "|---|---|---|---|"]
    for full, t, d, desc in rows:
        out.append(f"| `{full}` | {t} | {d} | {desc} |")
    text = "\n".join(out) + "\n"
    if "--check" in sys.argv:
        if open(OUT).read() != text:
            print("docs/src/reference.md is stale: run python3 docs/gen_reference.py")
            sys.exit(1)
        print(f"docs/src/reference.md is current ({len(rows)} keys)")
        return
    open(OUT, "w").write(text)
    print(f"wrote docs/src/reference.md ({len(rows)} keys)")


if __name__ == "__main__":
    main()
