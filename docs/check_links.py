#!/usr/bin/env python3
"""Checks the internal links of the docs (docs/src/*.md) and of the
README: every relative link names a file that exists, and every `#anchor`
a heading of that file, with mdBook's heading ids. External links are not
fetched (CI has no network).

    python3 docs/check_links.py
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def heading_ids(path):
    """mdBook's ids: lower case, spaces to `-`, other punctuation dropped;
    repeats get `-1`, `-2`..."""
    ids, seen, fence = set(), {}, False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip()
        text = re.sub(r"`|\*|_(?=\w)|\[|\]\([^)]*\)", "", text)
        base = "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return ids


def links(path):
    fence = False
    for no, line in enumerate(open(path, encoding="utf-8"), 1):
        if line.startswith("```"):
            fence = not fence
        if fence:
            continue
        for m in LINK.finditer(line):
            yield no, m.group(1)


def main():
    files = [os.path.join(ROOT, "README.md")]
    src = os.path.join(ROOT, "docs/src")
    files += sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".md"))
    bad = 0
    for f in files:
        for no, target in links(f):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            rel = os.path.relpath(f, ROOT)
            if not os.path.exists(dest):
                print(f"{rel}:{no}: {target}: no such file")
                bad += 1
                continue
            if anchor and dest.endswith(".md") and anchor not in heading_ids(dest):
                print(f"{rel}:{no}: {target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
                bad += 1
    print(f"{len(files)} files checked, {bad} broken links")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
