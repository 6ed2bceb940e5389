"""Hostile input: manifests, keys, ids and destinations built to break a restore.

The claim every test here checks (issue 4, "Hostile input"): whatever the input, memrestore
returns a valid plan (or finishes the restore) or raises one of its own errors (a subclass of
:class:`RestoreError`), never another exception; and it never writes outside the data dir (nor,
for a backend, outside the backend's root).

Property-based tests (hypothesis) fuzz the manifest parser, content keys, snapshot ids and whole
restores; explicit tests pin the cases the issue names. Settings suit CI: a fixed number of
examples, derandomized (the same examples every run), no example database, no deadlines.
Run ``pytest tests/test_hostile.py --hypothesis-show-statistics`` to see how many ran.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import blake3
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from memrestore.backends import LocalBackend, list_snapshots, read_manifest
from memrestore.backends.errors import (
    InvalidKeyError,
    InvalidManifestError,
    InvalidSnapshotIdError,
    ObjectNotFoundError,
    RestoreError,
    TransientBackendError,
)
from memrestore.backends.manifest import (
    SnapshotManifest,
    check_content_key,
    check_snapshot_id,
    parse_manifest,
)
from memrestore.tasks.errors import RestoreInProgressError
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.marker import MARKER_NAME, OURS_PREFIX
from memrestore.tasks.plan import DestinationState, RestoreMode, RestorePlan, safe_model_file_name
from memrestore.tasks.validate import validate
from tests.restorekit import execute

PROJECT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

#: Hypothesis settings for CI: enough examples to find the usual suspects, the same ones on every
#: run (derandomize) so a failure reproduces, and no database written into the checkout.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
#: Whole restores cost a few fsyncs each: fewer examples keep the file well under a minute.
FUZZ_RESTORES = settings(FUZZ, max_examples=150)

# FORMAT.md's example manifest, the same document the format tests start from.
from tests.manifests import BASE, H, manifest_doc, model_doc  # noqa: E402
from tests.test_backends import Collect  # noqa: E402  (a sink that keeps what it is given)

# --- the hostile vocabulary -----------------------------------------------------------------------

#: Unicode that looks like path syntax, or hides it: none of it is path syntax on POSIX or S3.
UNICODE_TRICKS = [
    "\uff0e\uff0e",          # fullwidth full stops: '．．'
    "\u2024\u2024",          # one dot leaders: '․․'
    "\u2025",                # two dot leader: '‥'
    "\ufe52\ufe52",          # small full stops
    "\uff0f",                # fullwidth solidus '／'
    "\u2215",                # division slash '∕'
    "\u2044",                # fraction slash '⁄'
    "\uff3c",                # fullwidth reverse solidus '＼'
    "\u29f5",                # reverse solidus operator
    "\u202e..",              # right-to-left override, then '..'
    "..\u202e",
    "\u202egnp.exe",         # 'exe.png' on screen
    ".\u0338.",              # combining long solidus overlay between dots
    "..\u0301",              # '..' with a combining acute accent
    "\u0307\u0307",          # combining dots above, alone
    "..\u200b",              # '..' + zero-width space
    "\u200d..",              # zero-width joiner + '..'
    "\ufeff..",              # byte order mark + '..'
    "e\u0301",               # NFD 'é'
    "\u00e9",                # NFC 'é'
    "\U0001f4a9",            # outside the BMP
    "%2e%2e",                # URL-encoded '..'
    "%2f",
    "C:",
    "~",
    "...",
    ".. ",
    " ..",
    "\t",
    "\n",
    "\x7f",
]

#: Keys that FORMAT.md refuses, with the reason check_content_key must give.
BAD_KEYS = [
    ("", "empty"),
    ("..", "'..' segment"),
    ("../etc/passwd", "'..' segment"),
    ("snap-1/../../etc/passwd", "'..' segment"),
    ("snap-1/..", "'..' segment"),
    (".", "'.' segment"),
    ("snap-1/./x", "'.' segment"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("//server/share/x", "absolute"),
    ("snap-1//x", "empty segment"),
    ("snap-1/", "empty segment"),
    ("snap-1\\..\\..\\x", "backslash"),
    ("..\\x", "backslash"),
    ("C:\\Windows\\x", "backslash"),
    ("\\\\server\\share", "backslash"),
    ("snap-1/x\x00.db", "NUL"),
    ("\x00", "NUL"),
    ("snap-1/\x00/../x", "NUL"),
    ("snap-1/\ud800", "UTF-8"),       # lone surrogates: no S3 key, no file name
    ("snap-1/\udcff/x", "UTF-8"),
    ("x" * 1025, "1025 bytes"),
    ("\u00e9" * 513, "1026 bytes"),   # 513 characters, 1026 bytes: the limit is in bytes
    ("a/" * 600 + "b", "bytes"),
]

#: Snapshot ids FORMAT.md refuses.
BAD_SNAPSHOT_IDS = [
    "", ".", "..", "../x", "a/b", "/abs", "a\\b", "..\\x", "snap\x00", "\x00", "snap-1\n", " snap-1",
    "snap 1", "x" * 129, "\uff0e\uff0e", "\u2024\u2024", "snap\u202e1", "sna\u0301p", "\ud800",
    "snap-\udcff", "ｓｎａｐ", "snap\u200b", "snap:1", "snap*", "%2e%2e", "latest/..",
]

#: Embedding model names a hostile manifest may hold: valid manifests, unsafe as file names.
HOSTILE_MODELS = [
    "../etc/passwd", "/abs", "/etc/cron.d/x", "a/../../b", "..", ".", "", "\\..\\..\\x", "x\x00y",
    "../../.restore-in-progress", ".restore-staging", "tenant_1", "hnsw", "\uff0e\uff0e\uff0fx",
    "\u202egnp.exe", "e\u0301", "\U0001f4a9", "m" * 200, "minilm", "CON", "a\nb",
]


# --- helpers ----------------------------------------------------------------------------------------


def fs_state(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under ``root`` (not following symlinks): files with their bytes and mode,
    symlinks with their target, directories. ``skip`` (and all under it) is left out."""
    out: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if skip is None or here / n != skip]
        for name in dirnames + filenames:
            path = here / name
            rel = str(path.relative_to(root))
            st_ = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st_.st_mode & 0o7777)
            else:
                out[rel] = ("file", path.read_bytes(), st_.st_mode & 0o7777)
    return out


def service_view(state: dict[str, tuple]) -> dict[str, tuple]:
    """The entries that belong to the service: everything not under a top-level ``.restore*``."""
    return {rel: v for rel, v in state.items() if not rel.split(os.sep)[0].startswith(OURS_PREFIX)}


def files_of(state: dict[str, tuple]) -> dict[str, bytes]:
    return {rel: v[1] for rel, v in state.items() if v[0] == "file"}


def assert_contained(data_dir: Path, planted: set[str]) -> None:
    """Everything under ``data_dir`` is a real entry inside it; the only symlinks are ones the
    test planted (a restore never creates a symlink, so nothing it wrote can point out)."""
    if not os.path.lexists(data_dir):
        return
    real = os.path.realpath(data_dir)
    for rel, (kind, *_rest) in fs_state(data_dir).items():
        if kind == "link":
            assert rel in planted, f"the restore left a symlink it did not find: {rel}"
        else:
            resolved = os.path.realpath(data_dir / rel)
            assert os.path.commonpath([real, resolved]) == real, f"{rel} resolves to {resolved}"


def assert_plan_contained(plan: RestorePlan) -> None:
    """Every destination in the plan is a clean relative path under the tenant's own dir."""
    seen = set()
    for item in plan.items:
        dest = PurePosixPath(item.destination)
        assert not dest.is_absolute(), item.destination
        assert dest.parts[0] == plan.tenant_dir, item.destination
        assert all(part not in ("", ".", "..") for part in dest.parts), item.destination
        assert re.fullmatch(r"[A-Za-z0-9._-]+", dest.name), item.destination
        assert "\\" not in item.destination and "\x00" not in item.destination
        assert item.destination not in seen
        seen.add(item.destination)
        check_content_key(item.content_key)


def tally(what: str) -> None:
    """Count an outcome in hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def assert_our_error(exc: BaseException) -> None:
    assert isinstance(exc, RestoreError), f"not one of our errors: {type(exc).__name__}: {exc}"
    assert str(exc), "an error without a message"


def passes(check: Callable[[str], str], value: str, refusal: type[RestoreError]) -> bool:
    """Whether ``check`` takes ``value`` as it is; a refusal must be ``refusal``, one of our errors."""
    try:
        return check(value) == value
    except refusal as exc:
        assert_our_error(exc)
        return False


def key_docs(key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The example manifest with ``key`` as its checkpoint's key, and as its model's."""
    return manifest_doc(sqlite_checkpoint_key=key), manifest_doc(hnsw_snapshots=[model_doc(content_key=key)])


def blake(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def parse_or_refuse(raw: bytes | str) -> SnapshotManifest | None:
    """parse_manifest's whole contract: a manifest, or InvalidManifestError naming where."""
    try:
        manifest = parse_manifest(raw, "fuzz/manifest.json")
    except InvalidManifestError as exc:
        assert "fuzz/manifest.json" in str(exc)
        tally("manifest refused (InvalidManifestError)")
        return None
    assert isinstance(manifest, SnapshotManifest)
    tally("manifest parsed")
    # What parsed holds FORMAT.md's rules.
    check_snapshot_id(manifest.snapshot_id)
    keys = [manifest.sqlite_checkpoint_key] + [e.content_key for e in manifest.hnsw_snapshots]
    for key in keys:
        check_content_key(key)
    assert len(set(keys)) == len(keys)
    assert len(set(manifest.embedding_models)) == len(manifest.embedding_models)
    assert manifest.oplog_floor <= manifest.oplog_watermark
    assert manifest.forget_floor is None or manifest.forget_floor <= manifest.oplog_watermark
    assert all(e.source_log_watermark <= manifest.oplog_watermark for e in manifest.hnsw_snapshots)
    assert manifest.manifest_version == 1
    # And survives its own round trip.
    assert parse_manifest(manifest.to_json(), "round trip") == manifest
    return manifest


# --- strategies -------------------------------------------------------------------------------------

any_char_text = st.text(st.characters(), max_size=24)  # lone surrogates included
json_ints = st.one_of(
    st.integers(),
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64, -(2**64), 10**30, 10**400]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), json_ints, st.floats(), any_char_text, st.sampled_from(UNICODE_TRICKS)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_char_text, inner, max_size=4),
    max_leaves=16,
)
hostile_strings = st.one_of(
    st.sampled_from([k for k, _ in BAD_KEYS] + BAD_SNAPSHOT_IDS + HOSTILE_MODELS + UNICODE_TRICKS),
    any_char_text,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


MANIFEST_PATHS = _paths(BASE)
CONTAINER_PATHS = [()] + [p for p in MANIFEST_PATHS if isinstance(_get(BASE, p), (dict, list))]


def _same_kind_as(value: Any) -> st.SearchStrategy:
    """A value of the kind FORMAT.md expects where ``value`` is: so that many mutants still parse
    and go on to be validated, hostile only in the values themselves."""
    if isinstance(value, bool) or value is None:
        return st.one_of(st.none(), st.sampled_from([H, "b" * 64]), hostile_strings)
    if isinstance(value, int):
        return st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**64 - 1]))
    if isinstance(value, str):
        return st.one_of(hostile_strings, st.sampled_from(["snap-1/x", "cosine", "DotProduct", "Euclidean", H]))
    return json_values


_kind_keeping_mutations = st.sampled_from(MANIFEST_PATHS).flatmap(
    lambda path: st.tuples(st.just("set"), st.just(path), _same_kind_as(_get(BASE, path)))
)
_shape_breaking_mutations = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(MANIFEST_PATHS), json_values),
    st.tuples(st.just("set"), st.sampled_from(MANIFEST_PATHS), hostile_strings),
    st.tuples(st.just("delete"), st.sampled_from(MANIFEST_PATHS), st.none()),
    st.tuples(st.just("extra"), st.sampled_from(CONTAINER_PATHS), st.tuples(any_char_text, json_values)),
    st.tuples(st.just("copy_hnsw"), st.just(("hnsw_snapshots",)), st.none()),
)
#: Half the mutations keep a field's kind (hostile in value only), half break its shape.
mutations = st.booleans().flatmap(lambda keep: _kind_keeping_mutations if keep else _shape_breaking_mutations)


def apply_mutation(doc: dict, mutation: tuple) -> None:
    op, path, arg = mutation
    *parents, last = path if path else (None,)
    target: Any = doc
    for part in parents:
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        else:
            return  # an earlier mutation changed the shape: nothing to do
    if op == "copy_hnsw":
        if isinstance(doc.get("hnsw_snapshots"), list) and doc["hnsw_snapshots"]:
            doc["hnsw_snapshots"].append(copy.deepcopy(doc["hnsw_snapshots"][0]))
        return
    if op == "extra":
        node = target if last is None else (
            target.get(last) if isinstance(target, dict) else
            target[last] if isinstance(target, list) and isinstance(last, int) and last < len(target) else None
        )
        if isinstance(node, dict):
            node[arg[0]] = arg[1]
        elif isinstance(node, list):
            node.append(arg[1])
        return
    if isinstance(target, dict) and (op == "set" or last in target):
        if op == "set":
            target[last] = arg
        else:
            del target[last]
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        if op == "set":
            target[last] = arg
        else:
            del target[last]


def dump(doc: Any, ascii_only: bool) -> bytes | str:
    """As bytes with every non-ASCII character escaped (lone surrogates become ``\\udXXX``), or
    as a str holding the characters themselves (a lone surrogate stays a lone surrogate)."""
    text = json.dumps(doc, ensure_ascii=ascii_only)
    return text.encode("ascii") if ascii_only else text


destinations = st.builds(
    DestinationState,
    wire_version=st.sampled_from([{"major": 1, "minor": 0}, {"major": 1, "minor": 9}, {"major": 2, "minor": 0}]),
    tombstone_floor=st.one_of(st.none(), st.sampled_from([0, 1, 50, 2**64 - 1])),
    embedding_model=st.one_of(st.none(), st.just("minilm"), st.sampled_from(HOSTILE_MODELS)),
)

#: A content-key segment that FORMAT.md allows, hostile-looking or plain. Short enough that the
#: segment and put_object's temp name fit NAME_MAX (255 bytes).
valid_segments = st.one_of(
    st.sampled_from(UNICODE_TRICKS),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/\\\x00"), min_size=1, max_size=30),
).filter(lambda s: s not in ("", ".", ".."))

#: Any key at all: built from path syntax, tricks and random characters (surrogates included).
hostile_keys = st.one_of(
    st.sampled_from([k for k, _ in BAD_KEYS]),
    st.lists(
        st.one_of(
            st.sampled_from(["", ".", "..", "...", "\\", "..\\..", "\x00", "C:", "escape"]),
            valid_segments,
            any_char_text,
        ),
        min_size=1,
        max_size=5,
    ).flatmap(lambda parts: st.sampled_from(["", "/"]).map(lambda lead: lead + "/".join(parts))),
    st.text(st.sampled_from(list("./\\\x00a\uff0e\u2024\u202e\u0301\ud800")), max_size=12),
    any_char_text,
    # very long: around S3's 1024-byte limit, and segments around NAME_MAX
    st.builds(lambda seg, n: "/".join([seg] * n), valid_segments, st.integers(1, 120)),
    st.integers(250, 1100).map(lambda n: "k/" + "n" * n),
    # through the backend's own symlink out of its root (see _check_key_in_backend)
    st.one_of(st.just("escape"), valid_segments.map(lambda seg: "escape/" + seg)),
)

valid_snapshot_ids = st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True).filter(lambda s: s not in (".", ".."))
hostile_snapshot_ids = st.one_of(
    st.sampled_from(BAD_SNAPSHOT_IDS),
    valid_snapshot_ids,
    any_char_text,
    st.text(st.sampled_from(list("./\\\x00aZ9_-\uff0e\u2024\u202e")), max_size=10),
    st.text(st.sampled_from(list("aZ9._-")), min_size=120, max_size=140),  # around the 128 limit
    st.just("latest"),
)


# --- fuzzing the manifest parser -----------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_parsed_or_refused(raw):
    parse_or_refuse(raw)


@FUZZ
@given(json_values, st.booleans())
def test_arbitrary_json_is_parsed_or_refused(doc, ascii_only):
    parse_or_refuse(dump(doc, ascii_only))


@FUZZ
@given(st.lists(mutations, min_size=1, max_size=4), st.booleans(), destinations)
def test_mutated_manifests_are_parsed_or_refused_and_plans_stay_inside(changes, ascii_only, destination):
    """Wrong types, huge and negative ints, floats, bools, nested garbage, missing and extra
    fields, hostile strings anywhere: a manifest or our error; a plan or our error."""
    doc = copy.deepcopy(BASE)
    for change in changes:
        apply_mutation(doc, change)
    manifest = parse_or_refuse(dump(doc, ascii_only))
    if manifest is None:
        return
    try:
        plan = validate(manifest, destination, "file:///fuzz")
    except RestoreError as exc:
        assert_our_error(exc)
        tally(f"plan refused ({type(exc).__name__})")
        return
    tally("plan made")
    assert_plan_contained(plan)


byte_edits = st.tuples(
    st.integers(0, 10_000), st.sampled_from(["replace", "insert", "delete"]), st.binary(min_size=1, max_size=3)
)


@FUZZ
@given(st.lists(byte_edits, min_size=1, max_size=6))
def test_byte_level_corruption_is_parsed_or_refused(edits):
    """A valid manifest with a few bytes replaced, inserted or deleted: invalid UTF-8, broken
    tokens, digits turned into letters."""
    raw = bytearray(json.dumps(BASE).encode())
    for pos, op, data in edits:
        pos %= len(raw) + 1
        if op == "replace":
            raw[pos:pos + len(data)] = data
        elif op == "insert":
            raw[pos:pos] = data
        else:
            del raw[pos:pos + len(data)]
    parse_or_refuse(bytes(raw))


@pytest.mark.parametrize("value", [
    10**4000, -(10**4000), 2**64, -1, 1.0, 1e400, float("nan"), float("inf"), True, False, "1", [1], {"a": 1}, None,
])
@pytest.mark.parametrize("field", ["tenant_id", "oplog_watermark", "manifest_version", "created_at_unix_micros"])
def test_numbers_of_every_wrong_kind_are_refused(field, value):
    assert parse_or_refuse(json.dumps(manifest_doc(**{field: value}))) is None


# --- content keys and snapshot ids ---------------------------------------------------------------


def _check_key_in_backend(root: Path, key: str) -> None:
    """A key is refused by every LocalBackend method before any I/O, or it is accepted and then
    it names a path inside the root, and writing and reading it stays inside the root. The root
    holds a symlink ``escape`` to a folder outside: a key through it is refused too."""
    root.mkdir(exist_ok=True)
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "passwd").write_bytes(b"root:x:0:0")
    if not os.path.lexists(root / "escape"):
        os.symlink(outside, root / "escape")
    outside_before = fs_state(root.parent, skip=root)
    root_before = fs_state(root)
    backend = LocalBackend(root)
    try:
        well_formed = check_content_key(key) == key
    except InvalidKeyError as exc:
        assert_our_error(exc)
        well_formed = False
    real_root = os.path.realpath(root)
    inside = well_formed and os.path.commonpath([real_root, os.path.realpath(root / key)]) == real_root
    if not inside:
        tally("key refused by the backend" + ("" if not well_formed else " (through a symlink)"))
        for call in (
            lambda: backend.object_size(key),
            lambda: backend.download(key, Collect()),
            lambda: backend.put_object(key, b"x"),
        ):
            with pytest.raises(InvalidKeyError):
                call()
        assert fs_state(root) == root_before, "a refused key was written"
        assert fs_state(root.parent, skip=root) == outside_before
        return
    tally("key accepted")
    # Accepted: FORMAT.md's shape, and a path under the root however the OS resolves it.
    assert not key.startswith("/") and "\\" not in key and "\x00" not in key
    assert all(seg not in ("", ".", "..") for seg in key.split("/"))
    with pytest.raises(ObjectNotFoundError):
        backend.object_size(key)
    backend.put_object(key, b"payload")
    assert backend.object_size(key) == 7
    sink = Collect()
    backend.download(key, sink)
    assert sink.buf.getvalue() == b"payload"
    assert files_of(fs_state(root)) == {str(PurePosixPath(key)): b"payload"}
    assert fs_state(root.parent, skip=root) == outside_before


@FUZZ
@given(hostile_keys)
def test_fuzzed_content_keys_are_refused_or_stay_inside_the_backend(key):
    valid = passes(check_content_key, key, InvalidKeyError)
    # A segment too long for a file name is valid but cannot be stored on disk: the backend's
    # answer to it is checked in test_keys_the_backend_can_never_serve_are_not_transient.
    if not (valid and any(len(seg.encode()) > 200 for seg in key.split("/"))):
        with tempfile.TemporaryDirectory() as tmp:
            _check_key_in_backend(Path(tmp) / "backend", key)
    # In a manifest, either field: refused exactly when check_content_key refuses it.
    for doc, other_key in zip(key_docs(key), ("snap-1/hnsw.bin", "snap-1/sqlite.db"), strict=True):
        manifest = parse_or_refuse(dump(doc, ascii_only=True))
        assert (manifest is not None) == (valid and key != other_key)  # the same key twice is refused


@FUZZ
@given(hostile_snapshot_ids)
def test_fuzzed_snapshot_ids_are_refused_or_read_from_inside_the_backend(sid):
    valid = passes(check_snapshot_id, sid, InvalidSnapshotIdError)
    if valid:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", sid) and sid not in (".", "..")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "backend"
        backend = LocalBackend(root)
        other = "another-snapshot-folder-" + "o" * 8  # longer than any generated valid id
        backend.put_object(f"{other}/manifest.json", json.dumps(BASE).encode())
        before = fs_state(Path(tmp))
        for call in (lambda: backend.read_manifest_bytes(sid), lambda: fetch_manifest(backend, None, sid)):
            with pytest.raises(RestoreError) as info:
                call()
            assert_our_error(info.value)
            if not valid and sid != "latest":
                assert isinstance(info.value, InvalidSnapshotIdError)
        assert fs_state(Path(tmp)) == before
        if valid:
            # A snapshot stored at that id is found and read back as it was written.
            backend.put_object(f"{sid}/manifest.json", json.dumps(manifest_doc(snapshot_id=sid)).encode())
            assert read_manifest(backend, sid).snapshot_id == sid
            assert backend.list_snapshot_ids() == sorted([other, sid])
    manifest = parse_or_refuse(dump(manifest_doc(snapshot_id=sid), ascii_only=True))
    assert (manifest is not None) == valid


@pytest.mark.parametrize("key,reason", BAD_KEYS, ids=[repr(k)[:40] for k, _ in BAD_KEYS])
def test_bad_content_keys_are_refused_everywhere(tmp_path, key, reason):
    """``..``, absolute paths, backslashes, NUL, lone surrogates, oversize: refused by the check,
    by the manifest (in either key field) and by every backend method, before any I/O."""
    with pytest.raises(InvalidKeyError, match=re.escape(reason)) as info:
        check_content_key(key)
    assert "manifest" in str(info.value) and "'..'" in str(info.value)  # says what a key must be
    for field_doc in key_docs(key):
        with pytest.raises(InvalidManifestError):
            parse_manifest(dump(field_doc, ascii_only=True), "hostile/manifest.json")
        if "\ud800" not in key and "\udcff" not in key:
            with pytest.raises(InvalidManifestError, match="content key|UTF-8"):
                parse_manifest(json.dumps(field_doc, ensure_ascii=False).encode(), "hostile/manifest.json")
    _check_key_in_backend(tmp_path / "backend", key)


@pytest.mark.parametrize("trick", UNICODE_TRICKS, ids=[repr(t) for t in UNICODE_TRICKS])
@pytest.mark.parametrize("shape", ["{t}", "snap-1/{t}", "snap-1/{t}/{t}/x", "{t}/{t}/etc/passwd"])
def test_unicode_tricks_in_keys_are_plain_names_inside_the_backend(tmp_path, trick, shape):
    """Lookalike dots and slashes, bidi overrides, combining marks: no path syntax on POSIX or S3;
    accepted as ordinary names, and they stay ordinary names inside the root."""
    key = shape.format(t=trick)
    assert check_content_key(key) == key
    _check_key_in_backend(tmp_path / "backend", key)


@pytest.mark.parametrize("sid", BAD_SNAPSHOT_IDS, ids=[repr(s)[:30] for s in BAD_SNAPSHOT_IDS])
def test_bad_snapshot_ids_are_refused_everywhere(tmp_path, sid):
    backend = LocalBackend(tmp_path / "backend")
    backend.put_object("snap-1/manifest.json", json.dumps(BASE).encode())
    with pytest.raises(InvalidSnapshotIdError) as info:
        check_snapshot_id(sid)
    assert "memrestore snapshots" in str(info.value)  # says what to do
    with pytest.raises(InvalidSnapshotIdError):
        backend.read_manifest_bytes(sid)
    with pytest.raises(InvalidSnapshotIdError):
        fetch_manifest(backend, 1, sid)
    with pytest.raises(InvalidManifestError, match="hostile/manifest.json") as info:
        parse_manifest(dump(manifest_doc(snapshot_id=sid), ascii_only=True), "hostile/manifest.json")
    if not any("\ud800" <= ch <= "\udfff" for ch in sid):  # those are refused as bad JSON already
        assert "snapshot_id" in str(info.value)


def test_keys_the_backend_can_never_serve_are_not_transient(tmp_path):
    """A file name over NAME_MAX, a key naming a directory, a symlink loop: the request can never
    succeed, so it must not be a TransientBackendError (the flow retries those, ~15 s of backoff)."""
    root = tmp_path / "backend"
    backend = LocalBackend(root)
    backend.put_object("snap-1/sub/blob", b"x")
    os.symlink("loop-b", root / "snap-1" / "loop-a")
    os.symlink("loop-a", root / "snap-1" / "loop-b")
    long_key = "snap-1/" + "n" * 300  # accepted by FORMAT.md (<= 1024 bytes), too long for a file name
    check_content_key(long_key)
    failures = {}
    for what, call in {
        "object_size(long name)": lambda: backend.object_size(long_key),
        "download(long name)": lambda: backend.download(long_key, Collect()),
        "download(directory)": lambda: backend.download("snap-1/sub", Collect()),
        "download(symlink loop)": lambda: backend.download("snap-1/loop-a", Collect()),
    }.items():
        with pytest.raises(RestoreError) as info:
            call()
        if isinstance(info.value, TransientBackendError):
            failures[what] = str(info.value)[-60:]
    assert not failures, f"permanent failures classed as transient: {failures}"


# --- sizes and depths -------------------------------------------------------------------------------

#: Peak memory a 100 MiB manifest may cost above the reading process's baseline: the bytes read,
#: one decoded copy, and the parser's own working set, with room to spare (5x the input).
MANIFEST_MEMORY_BUDGET = 512 * MiB

#: Reads one manifest through the backend and reports its memory. Two peaks: getrusage's
#: ru_maxrss, and /proc's VmHWM. On Linux ru_maxrss is inherited over fork and exec (the child
#: starts at the parent's peak, here pytest's), so it can hide a smaller increase; VmHWM belongs to
#: the exec'd program alone. The budget is checked on VmHWM; both are reported.
_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from memrestore.backends import LocalBackend, read_manifest
    from memrestore.backends.errors import RestoreError

    def vm_hwm_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    backend = LocalBackend(sys.argv[1])
    baseline = {"rusage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "hwm": vm_hwm_kib()}
    try:
        read_manifest(backend, "snap-1")
        result, message = "parsed", ""
    except RestoreError as exc:
        result, message = type(exc).__name__, str(exc)
    peak = {"rusage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "hwm": vm_hwm_kib()}
    print(json.dumps({"result": result, "message_len": len(message), "message_head": message[:300],
                      "baseline_kib": baseline, "peak_kib": peak}))
    """
)

BIG_SHAPES = [
    "giant label",
    "giant snapshot_id",  # refused: and the refusal quotes it, whole
    "6M unknown fields",
    "6M table_schema_versions",
    "50M-element array in an unknown field",
]


def _write_big_manifest(path: Path, shape: str, size: int = 100 * MiB) -> None:
    """Stream a manifest of at least ``size`` bytes and ``shape`` to ``path`` (never whole in memory)."""
    head = json.dumps(BASE).encode()[:-1]  # without the closing brace
    # ~1 MiB of distinct members per block: the block number goes into the placeholder.
    members = b"".join(b', "@@@@_%06d": 1' % j for j in range(MiB // 17))

    with open(path, "wb") as f:
        if shape == "giant label":
            f.write(head.replace(b'"label": null', b'"label": "'))
            for _ in range(size // MiB):
                f.write(b"x" * MiB)
            f.write(b'"}')
        elif shape == "giant snapshot_id":
            pre, post = head.split(b'"snap-1"', 1)
            f.write(pre + b'"')
            for _ in range(size // MiB):
                f.write(b"x" * MiB)
            f.write(b'"' + post + b"}")
        elif shape == "6M unknown fields":
            f.write(head)
            for blk in range(size // len(members) + 1):
                f.write(members.replace(b"@@@@", b"u%03d" % blk))
            f.write(b"}")
        elif shape == "6M table_schema_versions":
            pre, post = head.split(b'"memory_commit_log": 1', 1)
            f.write(pre + b'"memory_commit_log": 1')
            for blk in range(size // len(members) + 1):
                f.write(members.replace(b"@@@@", b"t%03d" % blk))
            f.write(post + b"}")
        elif shape == "50M-element array in an unknown field":
            f.write(head + b', "unknown": [0')
            for _ in range(size // MiB):
                f.write(b",1" * (MiB // 2))
            f.write(b"]}")
        else:
            raise AssertionError(shape)


@pytest.fixture(scope="module")
def big_manifest_reports(tmp_path_factory) -> dict[str, dict]:
    """Each shape read by its own fresh process; the processes run at once to save wall time."""
    procs, sizes = {}, {}
    for shape in BIG_SHAPES:
        root = tmp_path_factory.mktemp("big") / "backend"
        (root / "snap-1").mkdir(parents=True)
        path = root / "snap-1" / "manifest.json"
        _write_big_manifest(path, shape)
        sizes[shape] = path.stat().st_size
        procs[shape] = (path, subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(root)], cwd=PROJECT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    reports = {}
    for shape, (path, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        path.unlink()
        reports[shape] = {"returncode": proc.returncode, "stderr": err, "size": sizes[shape],
                          **(json.loads(out) if proc.returncode == 0 else {})}
    return reports


@pytest.mark.parametrize("shape", BIG_SHAPES)
def test_a_100_mib_manifest_is_parsed_or_refused_in_bounded_memory(big_manifest_reports, shape, record_property):
    report = big_manifest_reports[shape]
    assert report["returncode"] == 0, f"not our error, or killed:\n{report['stderr'][-3000:]}"
    assert report["size"] >= 100 * MiB
    base, peak = report["baseline_kib"], report["peak_kib"]
    extra = (peak["hwm"] - base["hwm"]) * 1024
    line = (f"{shape}: {report['size'] / MiB:.1f} MiB manifest -> {report['result']}; peak RSS of the "
            f"reading process {peak['hwm'] / 1024:.0f} MiB (VmHWM; {extra / MiB:.0f} MiB above its "
            f"{base['hwm'] / 1024:.0f} MiB baseline), getrusage ru_maxrss {peak['rusage'] / 1024:.0f} MiB"
            + (f", message {report['message_len'] / MiB:.1f} MiB" if report["message_len"] > MiB else ""))
    record_property("memory", line)
    print(line)
    assert report["result"] in ("parsed", "InvalidManifestError"), line
    assert extra <= MANIFEST_MEMORY_BUDGET, line


NESTING = 100_000


@pytest.mark.parametrize("where", [
    "top level array", "top level object", "unknown field", "label", "table_schema_versions value",
    "hnsw_snapshots", "wire_version.major", "encryption",
])
@pytest.mark.parametrize("form", ["bytes", "str"])
def test_deeply_nested_json_is_refused(where, form):
    arrays = "[" * NESTING + "]" * NESTING
    objects = '{"a":' * NESTING + "1" + "}" * NESTING
    base = json.dumps(BASE)
    raw = {
        "top level array": arrays,
        "top level object": objects,
        "unknown field": base[:-1] + ', "unknown": ' + arrays + "}",
        "label": base.replace('"label": null', '"label": ' + objects),
        "table_schema_versions value": base.replace('"memory_commit_log": 1', '"memory_commit_log": ' + arrays),
        "hnsw_snapshots": base.replace('"hnsw_snapshots": [', '"hnsw_snapshots": [' + arrays + ", "),
        "wire_version.major": base.replace('"major": 1', '"major": ' + objects),
        "encryption": base.replace('"dek_id": "dek-1"', '"dek_id": ' + arrays),
    }[where]
    with pytest.raises(InvalidManifestError, match="fuzz/manifest.json") as info:
        parse_manifest(raw if form == "str" else raw.encode(), "fuzz/manifest.json")
    assert len(str(info.value)) < 2000


def test_a_deeply_nested_manifest_in_a_backend_is_reported_not_fatal(tmp_path):
    backend = LocalBackend(tmp_path / "backend")
    backend.put_object("deep/manifest.json", b"[" * NESTING + b"]" * NESTING)
    backend.put_object("snap-1/manifest.json", json.dumps(BASE).encode())
    with pytest.raises(InvalidManifestError):
        read_manifest(backend, "deep")
    listing = list_snapshots(backend)
    assert [m.snapshot_id for m in listing.snapshots] == ["snap-1"]
    assert list(listing.unreadable) == ["deep"]


#: The longest message an error may carry: a message is read by a person, and persisted in
#: Prefect's flow-run state and logs; hostile input must not make it megabytes long.
MESSAGE_LIMIT = 4096


def test_error_messages_stay_short_and_inert_for_huge_or_tricky_input():
    """The hostile value is quoted in the message, cut to a readable length, with control and
    bidi characters escaped (an RTL override in a message reorders the operator's terminal)."""
    huge = "x" * MiB
    model = model_doc()
    cases: dict[str, Any] = {
        "snapshot_id": lambda: parse_manifest(json.dumps(manifest_doc(snapshot_id=huge)), "m"),
        "sqlite_checkpoint_key": lambda: parse_manifest(json.dumps(manifest_doc(sqlite_checkpoint_key=huge)), "m"),
        "hnsw content_key": lambda: parse_manifest(
            json.dumps(manifest_doc(hnsw_snapshots=[dict(model, content_key="/" + huge)])), "m"),
        "embedding_model named twice": lambda: parse_manifest(json.dumps(manifest_doc(hnsw_snapshots=[
            dict(model, embedding_model=huge), dict(model, embedding_model=huge, content_key="snap-1/b")])), "m"),
        "table_schema_versions key": lambda: parse_manifest(
            json.dumps(manifest_doc(table_schema_versions={huge: -1})), "m"),
        "table_schema_versions key with RTL override": lambda: parse_manifest(
            json.dumps(manifest_doc(table_schema_versions={"\u202eevil": -1})), "m"),
        "check_content_key": lambda: check_content_key(huge),
        "check_snapshot_id": lambda: check_snapshot_id(huge),
        "validate: model not in snapshot": lambda: validate(
            parse_manifest(json.dumps(manifest_doc(hnsw_snapshots=[dict(model, embedding_model=huge)])), "m"),
            DestinationState(embedding_model="minilm"), "file:///b"),
    }
    failures = {}
    for what, call in cases.items():
        with pytest.raises(RestoreError) as info:
            call()
        message = str(info.value)
        if len(message) > MESSAGE_LIMIT:
            failures[what] = f"{len(message)} chars"
        elif any(ch in message for ch in "\u202e\u202d\u2066\u2067\u2068\x00\x1b"):
            failures[what] = f"raw control/bidi character in {message[:120]!r}"
    assert not failures, f"messages too long or not inert: {failures}"


# --- the same key twice -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["sqlite and hnsw", "two hnsw models"])
def test_a_manifest_naming_the_same_content_key_twice_is_refused_before_any_io(tmp_path, layout):
    model = model_doc()
    if layout == "sqlite and hnsw":
        doc = manifest_doc(hnsw_snapshots=[dict(model, content_key="snap-1/sqlite.db")])
    else:
        doc = manifest_doc(hnsw_snapshots=[
            dict(model, content_key="snap-1/hnsw.bin"),
            dict(model, embedding_model="e5", content_key="snap-1/hnsw.bin"),
        ])
    key = doc["hnsw_snapshots"][-1]["content_key"]
    backend = LocalBackend(tmp_path / "backend")
    backend.put_object("snap-1/sqlite.db", b"sqlite")
    backend.put_object("snap-1/hnsw.bin", b"hnsw")
    backend.put_object("snap-1/manifest.json", json.dumps(doc).encode())
    with pytest.raises(InvalidManifestError) as info:
        fetch_manifest(backend, 1, "snap-1")
    message = str(info.value)
    assert repr(key) in message and "more than one" in message, message
    assert "snap-1/manifest.json" in message  # says which manifest
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("member,value", [
    ("sqlite_checkpoint_key", '"snap-1/other.db"'),
    ("tenant_id", "2"),
    ("hnsw_snapshots", "[]"),
    ("snapshot_id", '"snap-2"'),
])
def test_a_manifest_with_a_json_member_twice_is_refused(member, value):
    """Two values for one field: serde (the service) refuses such a manifest ("duplicate field"),
    so one never comes from the service; reading either value silently (this parser keeps the
    last, others keep the first) would restore something no one can tell from the file."""
    raw = json.dumps(BASE)[:-1] + f', "{member}": {value}}}'
    with pytest.raises(InvalidManifestError, match=member):
        parse_manifest(raw, "dup/manifest.json")


# --- whole restores into a sandbox -----------------------------------------------------------------


def _plant_outside(sandbox: Path) -> Path:
    outside = sandbox / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "inner.bin").write_bytes(b"OUTSIDE-INNER")
    (outside / "empty").mkdir()
    (outside / "secret.txt").write_bytes(b"OUTSIDE-SECRET")
    return outside


#: How the data dir looks before a restore; tenant-specific ones use the manifest's tenant.
SETUPS = [
    "absent", "empty", "other tenant", "same tenant, with files", "same tenant, empty",
    "tenant dir -> outside dir", "tenant dir -> outside empty dir", "hnsw dir -> outside dir",
    "data.sqlite -> outside file", "model file -> outside file", ".restore-staging -> outside dir",
    ".restore-staging/tenant dir -> outside dir",
]


def _set_up_data_dir(data: Path, outside: Path, setup: str, tenant: str, model_file: str) -> set[str]:
    """Build the data dir; return the symlinks planted (relative paths)."""
    if setup == "absent":
        return set()
    data.mkdir()
    links: dict[str, Path] = {}
    if setup == "other tenant":
        (data / "tenant_other").mkdir()
        (data / "tenant_other" / "data.sqlite").write_bytes(b"other tenant")
    elif setup == "same tenant, with files":
        (data / tenant / "hnsw").mkdir(parents=True)
        (data / tenant / "data.sqlite").write_bytes(b"old sqlite")
        (data / tenant / "hnsw" / "old.bin").write_bytes(b"old hnsw")
    elif setup == "same tenant, empty":
        (data / tenant).mkdir()
    elif setup == "tenant dir -> outside dir":
        links[tenant] = outside / "dir"
    elif setup == "tenant dir -> outside empty dir":
        links[tenant] = outside / "empty"
    elif setup == "hnsw dir -> outside dir":
        (data / tenant).mkdir()
        links[f"{tenant}/hnsw"] = outside / "dir"
    elif setup == "data.sqlite -> outside file":
        (data / tenant).mkdir()
        links[f"{tenant}/data.sqlite"] = outside / "secret.txt"
    elif setup == "model file -> outside file":
        (data / tenant / "hnsw").mkdir(parents=True)
        links[f"{tenant}/hnsw/{model_file}"] = outside / "secret.txt"
    elif setup == ".restore-staging -> outside dir":
        links[".restore-staging"] = outside / "dir"
    elif setup == ".restore-staging/tenant dir -> outside dir":
        (data / ".restore-staging").mkdir()
        links[f".restore-staging/{tenant}"] = outside / "dir"
    elif setup != "empty":
        raise AssertionError(setup)
    for rel, target in links.items():
        os.symlink(target, data / rel)
    return set(links)


def restore_in_sandbox(
    sandbox: Path,
    doc: dict[str, Any],
    blobs: dict[str, bytes],
    mode: RestoreMode,
    setup: str,
    destination_model: str | None,
) -> RestoreError | None:
    """Write the snapshot to a local backend, prepare the data dir, restore, and check that
    nothing outside the data dir changed and that the data dir holds either exactly the restored
    tenant (per the mode) or, on a refusal or failure, exactly what it held before."""
    backend = LocalBackend(sandbox / "backend")
    for key, data in blobs.items():
        backend.put_object(key, data)
    backend.put_object(f"{doc['snapshot_id']}/manifest.json", json.dumps(doc).encode())
    outside = _plant_outside(sandbox)
    data = sandbox / "data"
    tenant = f"tenant_{doc['tenant_id']}"
    first_model = doc["hnsw_snapshots"][0]["embedding_model"] if doc["hnsw_snapshots"] else "m"
    planted = _set_up_data_dir(data, outside, setup, tenant, safe_model_file_name(first_model))
    outside_before = fs_state(sandbox, skip=data)
    data_before = fs_state(data)

    error: RestoreError | None = None
    try:
        manifest = fetch_manifest(backend, doc["tenant_id"], doc["snapshot_id"])
        plan = validate(manifest, DestinationState(embedding_model=destination_model), backend.url)
        assert_plan_contained(plan)
        execute(backend, plan, data, mode)
    except RestoreError as exc:  # anything else fails the test, with its traceback
        assert_our_error(exc)
        error = exc

    tally(f"restore: {type(error).__name__ if error else 'restored'}")
    assert fs_state(sandbox, skip=data) == outside_before, "something outside the data dir changed"
    data_after = fs_state(data)
    if error is not None:
        assert service_view(data_after) == service_view(data_before), f"a failed restore ({error}) changed the data dir"
        assert not os.path.lexists(data / MARKER_NAME), "a failed restore left its marker"
        assert_contained(data, planted)
        return error
    assert_contained(data, planted)
    expected = {f"{tenant}/data.sqlite": blobs[doc["sqlite_checkpoint_key"]]}
    for entry in doc["hnsw_snapshots"]:
        expected[f"{tenant}/hnsw/{safe_model_file_name(entry['embedding_model'])}"] = blobs[entry["content_key"]]
    if mode in (RestoreMode.SINGLE_TENANT, RestoreMode.REPLACE_TENANT):
        kept = {rel: v for rel, v in files_of(service_view(data_before)).items() if rel.split(os.sep)[0] != tenant}
        expected.update(kept)
    assert files_of(data_after) == expected
    assert not [rel for rel in data_after if rel.startswith(OURS_PREFIX)], "bookkeeping left behind"
    assert not [rel for rel, v in data_after.items() if v[0] == "link"], "a symlink survived in the restored tree"
    return None


@st.composite
def restorable_snapshots(draw):
    """A snapshot whose manifest mostly validates: hostile model names, tenant ids and keys that
    FORMAT.md allows, checksums right, absent or wrong, and a data dir in any starting state."""
    sid = draw(valid_snapshot_ids)
    tenant_id = draw(st.one_of(st.sampled_from([0, 1, 7, 2**64 - 1]), st.integers(0, 2**64 - 1)))
    models = draw(st.lists(
        st.one_of(st.sampled_from(HOSTILE_MODELS), st.text(st.characters(exclude_categories=["Cs"]), max_size=20)),
        min_size=1, max_size=3, unique=True,
    ))
    segments = draw(st.lists(valid_segments, min_size=len(models) + 1, max_size=len(models) + 1))
    keys = [f"{sid}/{i}/{seg}" for i, seg in enumerate(segments)]
    blobs = {key: draw(st.binary(max_size=64)) for key in keys}

    def checksum(key: str) -> str | None:
        kind = draw(st.sampled_from(["right", "right", "right", "none", "wrong"]))
        return {"right": blake(blobs[key]), "none": None, "wrong": blake(blobs[key] + b"!")}[kind]

    doc = manifest_doc(
        tenant_id=tenant_id,
        snapshot_id=sid,
        forget_floor=None,
        sqlite_checkpoint_key=keys[0],
        sqlite_checkpoint_checksum=checksum(keys[0]),
        hnsw_snapshots=[
            model_doc(embedding_model=m, content_key=k, checksum=checksum(k))
            for m, k in zip(models, keys[1:])
        ],
    )
    mode = draw(st.sampled_from(list(RestoreMode)))
    setup = draw(st.sampled_from(SETUPS))
    destination_model = draw(st.one_of(st.just(models[0]), st.sampled_from(models), st.none()))
    return doc, blobs, mode, setup, destination_model


@FUZZ_RESTORES
@given(restorable_snapshots())
def test_fuzzed_restores_write_only_inside_the_data_dir(snapshot):
    doc, blobs, mode, setup, destination_model = snapshot
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        restore_in_sandbox(Path(tmp), doc, blobs, mode, setup, destination_model)


@pytest.mark.parametrize("model", HOSTILE_MODELS, ids=[repr(m)[:30] for m in HOSTILE_MODELS])
def test_hostile_model_names_are_restored_under_safe_file_names(tmp_path, model):
    blobs = {"snap-1/sqlite.db": b"sqlite", "snap-1/hnsw.bin": b"hnsw"}
    doc = manifest_doc(
        sqlite_checkpoint_checksum=blake(b"sqlite"),
        hnsw_snapshots=[model_doc(embedding_model=model, checksum=blake(b"hnsw"))],
    )
    error = restore_in_sandbox(tmp_path, doc, blobs, RestoreMode.NEW_CLUSTER, "absent", model)
    assert error is None
    assert (tmp_path / "data" / "tenant_1" / "hnsw" / safe_model_file_name(model)).read_bytes() == b"hnsw"


def test_a_model_name_too_long_for_a_file_name_fails_cleanly(tmp_path):
    """FORMAT.md bounds no model name; one over NAME_MAX cannot be a file. Restored or refused,
    but with our error, nothing outside touched and nothing left behind."""
    model = "m" * 300
    blobs = {"snap-1/sqlite.db": b"sqlite", "snap-1/hnsw.bin": b"hnsw"}
    doc = manifest_doc(
        sqlite_checkpoint_checksum=None,
        hnsw_snapshots=[model_doc(embedding_model=model, checksum=None)],
    )
    error = restore_in_sandbox(tmp_path, doc, blobs, RestoreMode.NEW_CLUSTER, "empty", model)
    assert error is not None and "too long" in str(error).lower()


@pytest.mark.parametrize("mode", list(RestoreMode))
@pytest.mark.parametrize("setup", [s for s in SETUPS if "->" in s])
def test_symlinks_in_the_destination_are_refused_or_not_followed(tmp_path, mode, setup):
    """A tenant dir, ``hnsw`` dir or file in the destination that is a symlink pointing outside:
    refused, or replaced without being followed; the outside target is byte-identical after."""
    blobs = {"snap-1/sqlite.db": b"new sqlite", "snap-1/hnsw.bin": b"new hnsw"}
    doc = manifest_doc(
        sqlite_checkpoint_checksum=blake(b"new sqlite"),
        hnsw_snapshots=[model_doc(checksum=blake(b"new hnsw"))],
    )
    error = restore_in_sandbox(tmp_path, doc, blobs, mode, setup, "minilm")
    if mode is RestoreMode.WIPE_AND_RESTORE:
        assert error is None  # wipe replaces the link itself
    elif setup.startswith(".restore-staging"):
        assert error is None  # our own leftovers: dropped, never followed
    elif mode is RestoreMode.REPLACE_TENANT:
        # The tenant's dir is replaced whole (its links moved aside, then deleted, never followed);
        # a tenant path that is itself a link is refused.
        assert (error is not None) == setup.startswith("tenant dir ->"), error
    else:
        assert error is not None  # the tenant's path is taken: new_cluster and single_tenant refuse


#: Bookkeeping names a hostile (or careless) hand may plant in the data dir, each as a symlink.
PLANTED = [".restore-staging", ".restore-in-progress", ".restore-aside", ".restore-trash", ".restore-marker.tmp"]
TARGETS = ["outside dir", "outside empty dir", "outside file", "dangling"]


@pytest.mark.parametrize("mode", list(RestoreMode))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", PLANTED)
def test_planted_bookkeeping_symlinks_are_never_followed(tmp_path, name, target, mode):
    """``.restore-*`` entries that are symlinks out of the data dir: a restore refuses (any marker
    blocks it, whatever it is) or drops the link; it never writes through one, and the service's
    entries never end up outside the data dir."""
    backend = LocalBackend(tmp_path / "backend")
    blobs = {"snap-1/sqlite.db": b"new sqlite", "snap-1/hnsw.bin": b"new hnsw"}
    for key, data in blobs.items():
        backend.put_object(key, data)
    doc = manifest_doc(
        sqlite_checkpoint_checksum=blake(b"new sqlite"),
        hnsw_snapshots=[model_doc(checksum=blake(b"new hnsw"))],
    )
    backend.put_object("snap-1/manifest.json", json.dumps(doc).encode())
    outside = _plant_outside(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    if mode is not RestoreMode.NEW_CLUSTER:
        (data / "tenant_7").mkdir()
        (data / "tenant_7" / "data.sqlite").write_bytes(b"tenant 7, untouched unless wiped")
    if mode is RestoreMode.SINGLE_TENANT:
        (data / "tenant_1").mkdir()  # empty: single_tenant may use it
    link_target = {
        "outside dir": outside / "dir", "outside empty dir": outside / "empty",
        "outside file": outside / "secret.txt", "dangling": outside / "nothing-here",
    }[target]
    os.symlink(link_target, data / name)
    outside_before = fs_state(tmp_path, skip=data)
    service_before = service_view(fs_state(data))

    plan = validate(fetch_manifest(backend, 1, "snap-1"), DestinationState(embedding_model="minilm"), backend.url)
    try:
        execute(backend, plan, data, mode)
        error = None
    except RestoreError as exc:
        error = exc

    assert fs_state(tmp_path, skip=data) == outside_before, "written through a planted symlink"
    assert_contained(data, {name})
    after = fs_state(data)
    if name == MARKER_NAME:
        assert isinstance(error, RestoreInProgressError), f"any marker blocks a restore; got {error!r}"
        assert service_view(after) == service_before and after[name] == ("link", str(link_target))
    elif error is not None:
        assert service_view(after) == service_before
    else:
        restored = files_of(after)
        assert restored["tenant_1/data.sqlite"] == b"new sqlite"
        assert restored["tenant_1/hnsw/minilm.bin"] == b"new hnsw"
        if mode is RestoreMode.SINGLE_TENANT:
            assert restored["tenant_7/data.sqlite"] == b"tenant 7, untouched unless wiped"
        assert not os.path.lexists(data / MARKER_NAME)


@pytest.mark.parametrize("mode", list(RestoreMode))
def test_a_marker_that_is_a_directory_blocks_the_restore_with_our_error(tmp_path, mode):
    """FORMAT.md: any marker blocks a new restore, whatever its content; a directory is one."""
    backend = LocalBackend(tmp_path / "backend")
    for key, data in {"snap-1/sqlite.db": b"s", "snap-1/hnsw.bin": b"h"}.items():
        backend.put_object(key, data)
    doc = manifest_doc(sqlite_checkpoint_checksum=None, hnsw_snapshots=[model_doc(checksum=None)])
    backend.put_object("snap-1/manifest.json", json.dumps(doc).encode())
    data = tmp_path / "data"
    (data / MARKER_NAME).mkdir(parents=True)
    plan = validate(fetch_manifest(backend, 1, "snap-1"), DestinationState(), backend.url)
    with pytest.raises(RestoreInProgressError):
        execute(backend, plan, data, mode)
    assert set(fs_state(data)) == {MARKER_NAME}


def test_a_marker_symlink_is_not_read_through_into_the_message(tmp_path):
    """A marker planted as a symlink to a file outside (say /etc/shadow, for a restore run as
    root): it blocks the restore, and its target's bytes do not end up in the error message,
    the CLI's output and Prefect's logs."""
    backend = LocalBackend(tmp_path / "backend")
    for key, data in {"snap-1/sqlite.db": b"s", "snap-1/hnsw.bin": b"h"}.items():
        backend.put_object(key, data)
    doc = manifest_doc(sqlite_checkpoint_checksum=None, hnsw_snapshots=[model_doc(checksum=None)])
    backend.put_object("snap-1/manifest.json", json.dumps(doc).encode())
    outside = _plant_outside(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(outside / "secret.txt", data / MARKER_NAME)
    plan = validate(fetch_manifest(backend, 1, "snap-1"), DestinationState(), backend.url)
    with pytest.raises(RestoreInProgressError) as info:
        execute(backend, plan, data, RestoreMode.NEW_CLUSTER)
    assert "OUTSIDE-SECRET" not in str(info.value), str(info.value)


@pytest.mark.parametrize("where", ["marker in the data dir", "content object in the backend", "manifest in the backend"])
def test_a_fifo_never_blocks_a_restore(tmp_path, where):
    """A named pipe where a file should be: opening one for reading blocks until someone writes,
    so a restore that reads through it hangs for ever. It must be refused (our error) without
    waiting on it. The test plays the writer only to tell a blocked reader from one that merely
    looked: it holds the pipe open for a second, then closes it so a blocked reader ends."""
    backend = LocalBackend(tmp_path / "backend")
    doc = manifest_doc(sqlite_checkpoint_checksum=None, hnsw_snapshots=[model_doc(checksum=None)])
    backend.put_object("snap-1/sqlite.db", b"sqlite")
    backend.put_object("snap-1/hnsw.bin", b"hnsw")
    backend.put_object("snap-1/manifest.json", json.dumps(doc).encode())
    data = tmp_path / "data"
    data.mkdir()
    fifo = {
        "marker in the data dir": data / MARKER_NAME,
        "content object in the backend": tmp_path / "backend" / "snap-1" / "hnsw.bin",
        "manifest in the backend": tmp_path / "backend" / "snap-1" / "manifest.json",
    }[where]
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    outcome: dict[str, BaseException | None] = {}

    def restore() -> None:
        try:
            plan = validate(fetch_manifest(backend, 1, "snap-1"), DestinationState(), backend.url)
            execute(backend, plan, data, RestoreMode.NEW_CLUSTER)
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - checked below, in the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=restore, daemon=True)
    worker.start()
    blocked = False
    for _ in range(6000):  # ~60 s at most, however often the restore comes back to the pipe
        if not worker.is_alive():
            break
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while someone reads
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
            worker.join(0.01)
            continue
        worker.join(1.0)  # a reader that only inspected the pipe goes on without data
        blocked = blocked or worker.is_alive()
        os.close(writer)  # end of file: releases a reader that waits on the pipe
        worker.join(0.1)
    assert not worker.is_alive(), "the restore is still blocked on the FIFO"
    assert not blocked, f"the restore blocked reading the FIFO {fifo} (it would wait for ever)"
    error = outcome["error"]
    assert isinstance(error, RestoreError), f"a FIFO was not refused with our error: {error!r}"
