"""The fast reading of simple lines gives exactly what python-dotenv's own parser gives.

envfile.bindings reads plain ``KEY=value`` lines itself and hands every other line to
python-dotenv's parser; here both are compared, line numbers and errors included, on the
shared corpus, the real-world files and generated text made of the characters that matter."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dotenv.parser import parse_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.envcorpus import CORPUS
from vaultsync import envfile
from vaultsync.errors import ParseError

REAL_WORLD = sorted((Path(__file__).parent / "corpus").glob("*.env"))


def reference(text: str) -> list[tuple[str, str, int]] | tuple[int, str]:
    """What parse_stream alone reads (the pre-fast-path reading), or (line, message) of its error."""
    try:
        return [c for b in parse_stream(io.StringIO(text)) if (c := envfile._checked(b, "f.env"))]
    except ParseError as exc:
        return (exc.line, str(exc))


def fast(text: str) -> list[tuple[str, str, int]] | tuple[int, str]:
    try:
        return list(envfile.bindings(text, "f.env"))
    except ParseError as exc:
        return (exc.line, str(exc))


def normalized(raw: bytes) -> str:
    return envfile._decode(raw, "f.env")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_reads_the_same(name: str) -> None:
    text = normalized(CORPUS[name])
    assert fast(text) == reference(text)


@pytest.mark.parametrize("path", REAL_WORLD, ids=lambda p: p.name)
def test_real_world_files_read_the_same(path: Path) -> None:
    text = normalized(path.read_bytes())
    assert fast(text) == reference(text)


@pytest.mark.parametrize("text", [
    "export=1\n", "export  A=1\n", "exportA=1\n", "export\tA=1\n", "export =1\n", "A=#x\n", "A= #x\n", "A=x #c\n",
    "A=x#c\n", "A=\n", "A=", "A=1", "\n\n\nA=1\n", "  A=1\n", "A =1\n", "A= 1\n", "A=1 \n", "A=1\t\n",
    "A='x'\n", 'A="x\nB=2\n', "A=\"x\nB=2\"\nC=3\n", "#c\nA=1\n#\n", "A=1\n   \nB=2\n", "1A=x\n", "A.b-c=1\n",
    "A=\u00a0x\n", "A=x\u00a0y\n", "A=x\u2028y\n", "A=x\x1cy\n", "\ufeffA=1\n", "A=1\n\ufeffB=2\n", "'A'=1\n", "A\n",
    "A=1\nB\nC=3\n", "A=\\\n", "A=x'y\n", "A=\"x\" y\n", "=x\n", "A==b\n", "A=b=c\n",
])
def test_edge_lines_read_the_same(text: str) -> None:
    assert fast(text) == reference(text)


# The characters that change how a line reads: quotes, escapes, comments, export, whitespace
# of every kind, line ends and the other Unicode line breaks python-dotenv does not split on.
_ALPHABET = st.sampled_from(list("AB_1.-=#'\"\\ \t\n$ {}x") + ["export ", "\u00a0", "\u2028", "\x1c", "\x85", "\ufeff"])


@settings(max_examples=1500, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_generated_text_reads_the_same(text: str) -> None:
    assert fast(text) == reference(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", "B_1", "export C"]), st.text(max_size=12)), max_size=8))
def test_generated_assignments_read_the_same(pairs: list[tuple[str, str]]) -> None:
    text = "".join(f"{k}={v}\n" for k, v in pairs).replace("\r", "\n")
    assert fast(text) == reference(text)
