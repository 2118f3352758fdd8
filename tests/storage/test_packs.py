"""Packs (docs/format.md, "Packs"): the manifests of small results one process writes,
appended to one file, on local folders."""

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptEntryError
from functionfuse.storage import FileStorage
from functionfuse.storage.gc import GcPolicy, collect
from functionfuse.storage.inventory import Inventory
from functionfuse.storage.manifests import encode_manifest
from functionfuse.storage.packs import HEADER, PackIndex, PackWriter, decode_index, encode_index, rewrite, scan


@workflow
def seed():
    return 0


@workflow
def item(s, i):
    return {"i": s + i, "name": f"item-{i}", "vals": [i, i * 2]}


@workflow
def nested(s, i):  # not a "plain" tree (a tuple), but still no part: packed too
    return {"i": s + i, "pair": (i, None)}


def run(storage, n, *, base=0, name="wf", node=item, **kw):
    s = seed()
    wf = LocalWorkflow(*[node(s, base + i).set_name(f"n{i}") for i in range(n)], workflow_name=name)
    wf.set_storage(storage)
    out = wf.run(**kw)
    return out, wf.last_report


def packs_of(root):
    folder = os.path.join(str(root), "packs")
    return sorted(n for n in os.listdir(folder) if n.endswith(".pack")) if os.path.isdir(folder) else []


def lines_of(root, name):
    with open(os.path.join(str(root), "packs", name), "rb") as fh:
        data = fh.read()
    found, consumed = scan(data)
    return [(k, data[o:o + n]) for k, o, n in found], data, consumed


def loose_manifests(root):
    top = os.path.join(str(root), "manifests")
    return sorted(f for _, _, files in os.walk(top) for f in files)


def manifest(key, value=1):
    return encode_manifest({"key": key, "result": {"json": value}, "parts": []})


@pytest.mark.parametrize("node", [item, nested])
def test_a_run_of_small_results_appends_to_one_pack_and_creates_no_manifest_file(tmp_path, node):
    storage = FileStorage(tmp_path)
    out, rep = run(storage, 40, node=node)
    assert len(rep.computed) == 41
    assert loose_manifests(tmp_path) == []
    (pack,) = packs_of(tmp_path)
    lines, data, consumed = lines_of(tmp_path, pack)
    assert data.startswith(HEADER) and consumed == len(data)
    assert len(lines) == 41 and len({k for k, _ in lines}) == 41
    assert {k for k, _ in lines} == {rep.by_node()[n].key for n in rep.computed}
    # another process (a new storage object) reads every node; nothing is appended
    again = FileStorage(tmp_path)
    out2, rep2 = run(again, 40, node=node)
    assert out2 == out and rep2.computed == []
    assert again.read_task("wf", "n7") == out[7]
    assert again.read_task_meta("wf", "n7")["node"] == "n7"
    assert packs_of(tmp_path) == [pack]
    # a new parameter: a new run, its own pack
    run(again, 3, base=1000)
    assert len(packs_of(tmp_path)) == 2


def of_a_dead_writer(root, name):
    """Rename pack ``name`` as if a process that is gone had written it; returns the new name."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    parts = name.split("-")
    parts[-2] = dead.stdout.strip()
    killed = "-".join(parts)
    folder = os.path.join(str(root), "packs")
    os.rename(os.path.join(folder, name), os.path.join(folder, killed))
    if os.path.exists(os.path.join(folder, name[:-5] + ".idx")):
        os.rename(os.path.join(folder, name[:-5] + ".idx"), os.path.join(folder, killed[:-5] + ".idx"))
    return killed


def index_of(root, name):
    return os.path.join(str(root), "packs", name[:-5] + ".idx")


def test_a_closed_pack_has_an_index_file_and_a_bad_one_only_costs_a_search(tmp_path):
    out, rep = run(FileStorage(tmp_path), 30)
    (pack,) = packs_of(tmp_path)
    lines, data, _ = lines_of(tmp_path, pack)
    with open(index_of(tmp_path, pack), "rb") as fh:
        entries = decode_index(fh.read(), len(data))
    assert sorted((k.hex(), o, n) for k, o, n in entries) == sorted((k, data.index(m), len(m)) for k, m in lines)
    assert [k for k, _, _ in entries] == sorted(k for k, _, _ in entries)
    key = rep.by_node()["n17"].key
    # an index whose entries point elsewhere (a valid checksum, wrong offsets): the line
    # found there is not the key's, so the pack is searched
    shifted = encode_index([(k.hex(), o + 40, n) for k, o, n in entries], len(data))
    with open(index_of(tmp_path, pack), "wb") as fh:
        fh.write(shifted)
    assert FileStorage(tmp_path).read_task("wf", "n17") == out[17]
    assert FileStorage(tmp_path).results.read_manifest(key)["key"] == key
    # a damaged one (checksum): ignored; in-memory index built from the pack itself
    with open(index_of(tmp_path, pack), "r+b") as fh:
        fh.seek(40)
        fh.write(b"\xff")
    fresh = FileStorage(tmp_path)
    assert fresh.present([rep.by_node()[f"n{i}"].key for i in range(30)]) == {rep.by_node()[f"n{i}"].key
                                                                              for i in range(30)}
    assert run(fresh, 30)[1].computed == []
    # gc gives a gone writer's pack a good index again, and removes an index without pack
    killed = of_a_dead_writer(tmp_path, pack)
    open(tmp_path / "packs" / "20200101T000000.000000Z-h-1-abcd.idx", "wb").close()
    assert collect(Inventory(fresh.results), GcPolicy(grace_s=0)).packs == [killed]
    (clean,) = packs_of(tmp_path)
    assert sorted(os.listdir(tmp_path / "packs")) == sorted([clean, clean[:-5] + ".idx"])
    _, data, _ = lines_of(tmp_path, clean)
    with open(index_of(tmp_path, clean), "rb") as fh:
        assert len(decode_index(fh.read(), len(data))) == 31


def test_a_cut_last_line_is_skipped_and_gc_removes_it_once_the_writer_is_gone(tmp_path):
    storage = FileStorage(tmp_path)
    out, rep = run(storage, 5)
    (pack,) = packs_of(tmp_path)
    killed = of_a_dead_writer(tmp_path, pack)
    with open(tmp_path / "packs" / killed, "ab") as fh:
        fh.write(b"f" * 32 + b' {"checksum":"cut')
    fresh = FileStorage(tmp_path)
    assert fresh.read_task("wf", "n4") == out[4]
    assert run(fresh, 5)[1].computed == []
    report = collect(Inventory(fresh.results), GcPolicy(grace_s=0))
    assert report.packs == [killed]
    (clean,) = packs_of(tmp_path)
    lines, data, consumed = lines_of(tmp_path, clean)
    assert consumed == len(data) and len(lines) == 6  # the cut line is gone, every good one kept
    assert FileStorage(tmp_path).read_task("wf", "n4") == out[4]
    assert collect(Inventory(fresh.results), GcPolicy(grace_s=0)).packs == []  # nothing left to clean


def test_a_damaged_header_costs_no_line_and_gc_writes_it_again(tmp_path):
    out, _ = run(FileStorage(tmp_path), 4)
    (pack,) = packs_of(tmp_path)
    killed = of_a_dead_writer(tmp_path, pack)
    path = tmp_path / "packs" / killed
    data = bytearray(path.read_bytes())
    data[3] ^= 0x20
    path.write_bytes(bytes(data))
    again = FileStorage(tmp_path)
    assert run(again, 4)[1].computed == []
    assert collect(Inventory(again.results), GcPolicy(grace_s=0)).packs == [killed]
    (clean,) = packs_of(tmp_path)
    lines, data, _ = lines_of(tmp_path, clean)
    assert data.startswith(HEADER) and len(lines) == 5


def test_a_pack_being_written_is_left_alone_until_its_run_ends(tmp_path):
    """The writer holds its pack's lock while its run lasts: gc and removals leave the
    pack alone (removed lines go at a later gc), and a crash lets go of the lock."""
    storage = FileStorage(tmp_path)
    results = storage.results
    writer = PackWriter(str(tmp_path / "packs"))
    for key in ("a" * 32, "b" * 32):
        writer.append(key, manifest(key))
    (pack,) = packs_of(tmp_path)
    with open(tmp_path / "packs" / pack, "ab") as fh:  # as if a line were being written
        fh.write(b"f" * 32 + b' {"checksum":"being wri')
    assert collect(Inventory(results), GcPolicy(grace_s=0)).packs == []
    assert results.rewrite_packs(lambda key, _: key != "a" * 32, only={"a" * 32}) == [pack]
    assert packs_of(tmp_path) == [pack] and results.present(["a" * 32]) == {"a" * 32}
    writer.close()  # the run ends: the pack is anybody's now
    assert results.rewrite_packs(lambda key, _: key != "a" * 32, only={"a" * 32}) == []
    fresh = FileStorage(tmp_path).results
    assert fresh.present(["a" * 32, "b" * 32]) == {"b" * 32}


def test_a_damaged_line_is_recomputed_and_replaced_by_a_loose_manifest(tmp_path):
    storage = FileStorage(tmp_path)
    out, rep = run(storage, 3)
    key = storage.read_task_meta("wf", "n1")["key"]
    (pack,) = packs_of(tmp_path)
    path = tmp_path / "packs" / pack
    data = bytearray(path.read_bytes())
    at = data.index(key.encode() + b" ") + 33 + 120
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntryError, match=r"packs/.*\.pack \(byte \d+\)"):
        FileStorage(tmp_path).read_task("wf", "n1")
    with pytest.warns(Warning):
        out2, rep2 = run(FileStorage(tmp_path), 3)
    assert out2 == out
    assert [(n, rep2.by_node()[n].reason) for n in rep2.computed] == [("n1", "corrupt entry")]
    assert loose_manifests(tmp_path) == [key + ".json"]  # the replacement, which readers take first
    assert FileStorage(tmp_path).read_task("wf", "n1") == out[1]


def test_lookup_order_is_the_loose_file_then_the_first_pack_by_name(tmp_path):
    storage = FileStorage(tmp_path)
    results = storage.results
    key = "ab" * 16
    folder = str(tmp_path / "packs")
    late, early = PackWriter(folder), PackWriter(folder)
    late.append(key, manifest(key, "late"))  # opened first, so its name sorts first...
    early.append(key, manifest(key, "early"))
    first, second = sorted(os.listdir(folder))
    assert results.read_manifest(key)["result"] == {"json": "late"}
    os.remove(os.path.join(folder, first))  # ...until it is gone
    results.packs.refresh()
    assert results.read_manifest(key)["result"] == {"json": "early"}
    results._publish(f"manifests/{key[:2]}/{key}.json", manifest(key, "loose"), replace=False)
    assert results.read_manifest(key)["result"] == {"json": "loose"}
    assert results.present([key, "cd" * 16]) == {key}


def test_a_damaged_first_line_falls_back_to_the_next_good_one(tmp_path):
    key = "ab" * 16
    folder = str(tmp_path / "packs")
    writer = PackWriter(folder)
    good = manifest(key, "good")
    writer.append(key, good.replace(b'"good"', b'"bad!"'))  # seal no longer matches
    writer.append(key, good)
    assert FileStorage(tmp_path).results.read_manifest(key)["result"] == {"json": "good"}


def test_removing_results_rewrites_their_packs(tmp_path):
    storage = FileStorage(tmp_path)
    out, rep = run(storage, 5)
    keys = {n: storage.read_task_meta("wf", n)["key"] for n in ("n1", "n3", "n4")}
    assert storage.remove_task("wf", pattern="n[13]") == ["n1", "n3"]
    (pack,) = packs_of(tmp_path)
    lines, _, _ = lines_of(tmp_path, pack)
    left = {k for k, _ in lines}
    assert keys["n1"] not in left and keys["n3"] not in left and keys["n4"] in left
    assert len(left) == 4  # n0, n2, n4 and the seed
    fresh = FileStorage(tmp_path)
    assert fresh.present(keys.values()) == {keys["n4"]}
    assert fresh.read_task("wf", "n4") == out[4]
    storage.remove_workflow("wf")
    assert packs_of(tmp_path) == []  # no line left: no pack


def test_an_index_sees_what_another_process_appends(tmp_path):
    storage = FileStorage(tmp_path)
    run(storage, 2)
    key = storage.read_task_meta("wf", "n1")["key"]
    assert storage.present([key]) == {key}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from functionfuse.storage import FileStorage
        from functionfuse.backends.builtin.localback import LocalWorkflow
        from functionfuse import workflow

        @workflow
        def seed():
            return 0

        @workflow
        def item(s, i):
            return {{"i": s + i, "name": f"item-{{i}}", "vals": [i, i * 2]}}

        wf = LocalWorkflow(item(seed(), 7).set_name("other"), workflow_name="other")
        wf.set_storage(FileStorage({str(tmp_path)!r}))
        wf.run()
        print(wf.last_report.by_node()["other"].key)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    other = done.stdout.split()[-1]
    assert storage.present([other]) == {other}  # the same storage object, its index refreshed
    assert storage.load("wf", other) == {"i": 7, "name": "item-7", "vals": [7, 14]}


def test_a_forked_child_appends_to_a_pack_of_its_own(tmp_path):
    folder = str(tmp_path / "packs")
    writer = PackWriter(folder)
    writer.append("a" * 32, manifest("a" * 32))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            writer.append("b" * 32, manifest("b" * 32))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    writer.append("c" * 32, manifest("c" * 32))
    names = sorted(os.listdir(folder))
    assert len(names) == 2
    keys = {}
    for name in names:
        lines, _, _ = lines_of(tmp_path, name)
        keys[name] = [k for k, _ in lines]
    assert sorted(keys.values()) == [["a" * 32, "c" * 32], ["b" * 32]]


REMOVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from functionfuse.storage.results import ResultStore

    store, first = ResultStore.from_url(sys.argv[1]), int(sys.argv[2])
    for i in range(first, 200, 8):  # one key at a time: many rewrites of the same packs
        store.delete_manifests([f"{i:032x}"])
""")


def test_two_removals_at_once_both_take_effect(tmp_path):
    storage = FileStorage(tmp_path)
    results = storage.results
    results.start_pack()
    for i in range(200):
        results.save_plain(f"{i:032x}", {"json": i})
    results.close_pack()
    procs = [subprocess.Popen([sys.executable, "-c", REMOVER, str(tmp_path), str(first), ROOT]) for first in range(4)]
    assert [p.wait(120) for p in procs] == [0] * 4
    fresh = FileStorage(tmp_path).results
    left = {i for i in range(200) if fresh.present([f"{i:032x}"])}
    assert left == {i for i in range(200) if i % 8 >= 4}
    assert len(packs_of(tmp_path)) == 1  # each rewrite replaced the pack it rewrote


REWRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from functionfuse.storage.packs import rewrite
    import os

    folder, seconds = sys.argv[1], float(sys.argv[2])
    end, n = time.time() + seconds, 0
    while time.time() < end:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".pack") and rewrite(folder, name, lambda key, _: True) not in (None, "busy"):
                n += 1
    print(n)
""")


@pytest.mark.parametrize("mode", ["search", "index"])
def test_lookups_never_miss_while_a_pack_is_rewritten(tmp_path, mode):
    storage = FileStorage(tmp_path)
    results = storage.results
    results.start_pack()
    keys = [f"{i:032x}" for i in range(50)]
    for i, key in enumerate(keys):
        results.save_plain(key, {"json": i})
    results.close_pack()
    proc = subprocess.Popen([sys.executable, "-c", REWRITER, str(tmp_path / "packs"), "2", ROOT],
                            stdout=subprocess.PIPE, text=True)
    misses = lookups = 0
    reader = FileStorage(tmp_path).results
    while proc.poll() is None:
        key = keys[lookups % 50]
        if mode == "search":
            reader = FileStorage(tmp_path).results  # a new reader: index files, or a search
            found = reader.manifest_entry(key)[0]["result"] == {"json": lookups % 50}
        else:
            found = reader.present([key]) == {key} and reader.read_manifest(key)["key"] == key
        misses += not found
        lookups += 1
    rewrites = int(proc.communicate()[0])
    assert rewrites > 20 and lookups > 200
    assert misses == 0


WRITER = textwrap.dedent("""
    import os
    import sys
    sys.path.insert(0, sys.argv[3])
    from functionfuse.storage.packs import PackWriter

    folder, n = sys.argv[1], int(sys.argv[2])
    writer = PackWriter(folder)
    for i in range(n):
        key = f"{i:032x}"
        writer.append(key, b'{"checksum":"' + key.encode() * 2 + b'","n":' + str(i).encode() + b"}")
    open(os.path.join(os.path.dirname(folder), "written"), "w").close()
    sys.stdin.read()
""")


def test_a_rewriter_never_touches_the_pack_a_writer_appends_to(tmp_path):
    """A writer appends 10,000 lines while another process tries to rewrite its pack
    without half of them: every try finds it busy (or, in the instant between the pack's
    creation and its lock, takes it empty: the writer then makes another), and once the
    writer is done the rewrite leaves exactly the other half."""
    folder = str(tmp_path / "packs")
    os.makedirs(folder)
    n = 10000
    doomed = {f"{i:032x}" for i in range(0, n, 2)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, folder, str(n), ROOT], stdin=subprocess.PIPE)
    try:
        tries = 0
        while not os.path.exists(tmp_path / "written"):
            for name in packs_of(tmp_path):
                outcome = rewrite(folder, name, lambda key, _: key not in doomed)
                if outcome is None:
                    # Taken (and unlinked) while still empty, between its creation and its
                    # writer's lock: the writer sees that and makes another pack
                    # (packs._locked_new).  No line is lost: the check at the end says so.
                    continue
                assert outcome == "busy"
                tries += 1
        for name in packs_of(tmp_path):  # written, the writer still there: still its pack
            assert rewrite(folder, name, lambda key, _: key not in doomed) == "busy"
        writer.stdin.close()  # the writer ends (without closing its pack: as if killed)
        assert writer.wait(60) == 0 and tries > 3
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    for name in packs_of(tmp_path):
        assert rewrite(folder, name, lambda key, _: key not in doomed) not in (None, "busy")
    index = PackIndex(folder)
    index.refresh()
    assert index.keys() == {f"{i:032x}" for i in range(1, n, 2)}



FULL = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.errors import StorageError
    from functionfuse.storage import FileStorage

    @workflow
    def item(i):
        return {"i": i, "name": f"item-{i}"}

    storage = FileStorage(sys.argv[1])
    if sys.argv[3] == "limit":
        storage.results._mark()  # FFSTORE.json and tmp/ before the limit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2500, resource.RLIM_INFINITY))
    wf = LocalWorkflow(*[item(i).set_name(f"n{i}") for i in range(8)], workflow_name="wf")
    wf.set_storage(storage)
    try:
        print("DONE", wf.run(), wf.last_report.summary())
    except StorageError as exc:
        print("STORAGE_ERROR", exc)
""")


def test_a_failed_append_names_the_node_and_the_storage_and_loses_nothing_stored(tmp_path):
    def run_script(mode):
        done = subprocess.run([sys.executable, "-c", FULL, str(tmp_path), ROOT, mode], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = run_script("limit")  # the pack may grow to 2,500 bytes: a few lines, then EFBIG
    assert out.startswith("STORAGE_ERROR node 'n"), out
    assert "of workflow 'wf'" in out and str(tmp_path) in out and "File too large" in out
    (pack,) = packs_of(tmp_path)
    lines, data, consumed = lines_of(tmp_path, pack)
    assert 1 <= len(lines) < 8
    for key, _ in lines:  # what was appended before the failure is stored, whole
        assert FileStorage(tmp_path).results.read_manifest(key)["key"] == key
    out = run_script("none")  # space again: the next run reads those and computes the rest
    assert out.startswith("DONE") and f"{8 - len(lines)} computed" in out, out


CUT = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from functionfuse.storage.packs import PackWriter
    from functionfuse.storage.manifests import encode_manifest

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, hard))
    writer = PackWriter(sys.argv[1])
    stored = []
    for i in range(100):
        key = f"{i:032x}"
        try:
            writer.append(key, encode_manifest({"key": key, "result": {"json": "x" * 200}, "parts": []}))
        except OSError:
            break
        stored.append(key)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
    key = "f" * 32
    writer.append(key, encode_manifest({"key": key, "result": {"json": "after"}, "parts": []}))
    stored.append(key)
    writer.close()
    print(" ".join(stored))
""")


def test_after_a_failed_write_the_next_append_goes_to_a_new_pack(tmp_path):
    """A write cut by a full disk leaves a cut last line; appending after it would glue the
    next line to it. The writer abandons that pack: every line it reported stored is readable."""
    folder = str(tmp_path / "packs")
    done = subprocess.run([sys.executable, "-c", CUT, folder, ROOT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stored = done.stdout.split()
    assert 2 <= len(stored) < 100 and stored[-1] == "f" * 32
    assert len(packs_of(tmp_path)) == 2  # the abandoned one (with its cut line) and the new one
    results = FileStorage(tmp_path).results
    for key in stored:
        assert results.read_manifest(key)["key"] == key
