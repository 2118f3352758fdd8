"""Helpers shared by tests (importable because conftest puts tests/ on sys.path)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(path, *args, check=True, timeout=120):
    """Run a Python script in a fresh interpreter with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(path), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout if check else proc


def store_files(root, *folders):
    """Relative paths of the files under ``folders`` of a store (all but run records by default)."""
    folders = folders or ("objects", "manifests", "side", "tmp")
    out = []
    for folder in folders:
        top = os.path.join(str(root), folder)
        for dirpath, _, files in os.walk(top):
            out += [os.path.relpath(os.path.join(dirpath, f), str(root)) for f in files]
    return sorted(out)


def manifest_span(root, key):
    """``(file, start, end)`` of the stored bytes of ``key``'s manifest in a local store:
    its loose file, else its first line in the packs (docs/format.md, "Packs")."""
    loose = os.path.join(str(root), "manifests", key[:2], key + ".json")
    if os.path.exists(loose):
        return loose, 0, os.path.getsize(loose)
    folder = os.path.join(str(root), "packs")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        with open(path, "rb") as fh:
            data = fh.read()
        at = data.find(b"\n" + key.encode() + b" ")
        if at >= 0:
            start = at + 34
            return path, start, data.index(b"\n", start)
    raise FileNotFoundError(f"no manifest of {key} under {root}")


def stored_keys(root):
    """Keys with a manifest in a local store: loose files and lines of packs."""
    keys = set()
    for _, _, files in os.walk(os.path.join(str(root), "manifests")):
        keys.update(f[:-5] for f in files if f.endswith(".json"))
    folder = os.path.join(str(root), "packs")
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        with open(os.path.join(folder, name), "rb") as fh:
            lines = fh.read().split(b"\n")[1:-1]
        keys.update(line[:32].decode() for line in lines if line[32:33] == b" ")
    return keys


def damage_manifest(root, key, change):
    """Replace the stored bytes of ``key``'s manifest (loose or packed) by
    ``change(bytearray of them)``; returns the file changed."""
    path, start, end = manifest_span(root, key)
    with open(path, "rb") as fh:
        data = fh.read()
    new = bytes(change(bytearray(data[start:end])))
    os.chmod(path, 0o644)
    with open(path, "wb") as fh:
        fh.write(data[:start] + new + data[end:])
    return path


def result_files(storage, workflow, node):
    """``(manifest path, [object paths])`` of a node's current version in a local store."""
    meta = storage.read_task_meta(workflow, node)
    key = meta["key"]
    manifest = os.path.join(storage.path, "manifests", key[:2], key + ".json")
    objects = [
        os.path.join(storage.path, "objects", p["object"][:2], p["object"][2:4], p["object"])
        for p in meta["parts"]
    ]
    return manifest, objects


def canonical(tree):
    """A result tree as a manifest stores it: canonical JSON (sorted keys), parsed back."""
    import json

    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return json.loads(text)


def roundtrip(value, **kw):
    """Split ``value``, store its tree and part entries as a manifest would, and join them back."""
    from functionfuse.serializers.parts import join, split

    tree, parts = split(value, **kw)
    entries = canonical([p.entry() for p in parts])
    back = join(canonical(tree), entries, [p.to_bytes() for p in parts], safe=kw.get("safe", False))
    return back, tree, parts


def lines_match(expected, actual):
    """Whether the lines ``actual`` match the lines ``expected``, where an expected line
    "..." matches any number of lines and "..." inside a line matches any text."""
    import re

    def rec(i, j):
        if i == len(expected):
            return j == len(actual)
        if expected[i] == "...":
            return any(rec(i + 1, k) for k in range(j, len(actual) + 1))
        if j < len(actual):
            pattern = ".*".join(map(re.escape, expected[i].split("...")))
            if expected[i] == actual[j] or re.fullmatch(pattern, actual[j]):
                return rec(i + 1, j + 1)
        return False

    return rec(0, 0)


_FENCE = None
_MARK = "@@BLOCK@@"


def page_blocks(path):
    """``(language, body)`` of every fenced block of a Markdown page."""
    import re

    global _FENCE
    if _FENCE is None:
        _FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
    with open(path, encoding="utf-8") as fh:
        return [(m.group(1), m.group(2)) for m in _FENCE.finditer(fh.read())]


def run_page_python(path, cwd, timeout=240):
    """Run a page's Python blocks top to bottom as one script in ``cwd``; a ```text block
    right after a Python block is its expected output (see :func:`lines_match`).
    Returns how many Python blocks ran."""
    blocks = page_blocks(path)
    code, expected = [], {}
    for i, (lang, body) in enumerate(blocks):
        if lang == "python":
            code.append(body)
        elif lang == "text" and i and blocks[i - 1][0] == "python":
            expected[len(code) - 1] = body
    if not code:
        return 0
    script = os.path.join(str(cwd), "page.py")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write("".join(f"print({_MARK!r}, flush=True)\n{body}\n" for body in code))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, script],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = proc.stdout.split(_MARK + "\n")[1:]
    for i, want in expected.items():
        got = outputs[i] if i < len(outputs) else "<missing>"
        wanted = [line.rstrip() for line in want.strip("\n").splitlines()]
        gotten = [line.rstrip() for line in got.strip("\n").splitlines()]
        assert lines_match(wanted, gotten), f"block {i} of {path}:\n--- expected\n{want}--- got\n{got}"
    return len(code)
