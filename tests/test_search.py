"""Search through `Library` with the fake encoder: rankings, query arithmetic, filters, image→text.

Every path that brute force can check is compared with `exact_search` over the stored
vectors and the combined query vector.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from hypothesis import given, settings
from hypothesis import strategies as st
from fakes import FakeEncoder, write_colour_photos

from clipsearch import Library, QueryError
from clipsearch.images import load_image
from clipsearch.index import exact_search
from clipsearch.search import Hit, names_image_file, parse_query


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _oracle(lib: Library, query: np.ndarray, k: int, *, ids: list[int] | None = None,
            min_score: float | None = None, exclude: tuple[int, ...] = ()) -> list[tuple[int, float]]:
    all_ids, vecs = lib.vectors()
    keep = np.ones(len(all_ids), bool)
    if ids is not None:
        keep &= np.isin(all_ids, ids)
    keep &= ~np.isin(all_ids, exclude)
    scores, got = exact_search(vecs[keep], all_ids[keep], query, k)
    pairs = [(int(i), float(s)) for i, s in zip(got[0], scores[0])]
    return [(i, s) for i, s in pairs if min_score is None or s >= min_score]


def _assert_hits(hits: list[Hit], expected: list[tuple[int, float]], lib: Library) -> None:
    assert [h.id for h in hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    for h in hits:
        assert lib.get_image(h.id).path == h.path


def _id(lib: Library, path: str) -> int:
    return lib.catalog.find_path(path).id


# -- text → image ---------------------------------------------------------------------

@pytest.mark.parametrize("colour", ["red", "green", "blue", "white", "black"])
def test_a_colour_word_finds_its_photo_first(library: Library, colour_photos: dict[str, str], colour: str) -> None:
    hits = library.search(colour, k=3)
    assert hits[0].path == colour_photos[colour]
    assert hits[0].score > hits[1].score


def test_text_search_matches_brute_force(library: Library, fake_encoder: FakeEncoder) -> None:
    q = fake_encoder.text_vector("a red photo")
    np.testing.assert_allclose(library.query_vector("a red photo"), q, atol=1e-6)
    _assert_hits(library.search("a red photo", k=5), _oracle(library, q, 5), library)


def test_k_limits_the_results(library: Library) -> None:
    assert len(library.search("red", k=1)) == 1
    assert len(library.search("red", k=3)) == 3
    assert len(library.search("red", k=100)) == 8
    with pytest.raises(QueryError, match="k must be at least 1"):
        library.search("red", k=0)


def test_min_score_matches_brute_force(library: Library, fake_encoder: FakeEncoder) -> None:
    q = fake_encoder.text_vector("orange")
    scores = [h.score for h in library.search("orange", k=8)]
    cut = (scores[2] + scores[3]) / 2
    hits = library.search("orange", k=8, min_score=cut)
    assert len(hits) == 3 and all(h.score >= cut for h in hits)
    _assert_hits(hits, _oracle(library, q, 8, min_score=cut), library)
    assert library.search("orange", k=8, min_score=1.0) == []  # no photo is the word itself
    with pytest.raises(QueryError, match="min:1.01 is not a cosine score"):  # a typo, not "nothing"
        library.search("orange", k=8, min_score=1.01)


def test_folder_filter_matches_brute_force(library: Library, colour_photos: dict[str, str], tmp_path: Path,
                                           fake_encoder: FakeEncoder) -> None:
    # A sibling folder that shares the prefix must not leak into "sub".
    write_colour_photos(tmp_path / "photos" / "sub2", ["red"])
    library.index(tmp_path / "photos")
    sub = tmp_path / "photos" / "sub"
    hits = library.search("red", k=5, folder=sub)
    assert {h.path for h in hits} == {colour_photos["white"], colour_photos["black"]}
    sub_ids = [_id(library, colour_photos["white"]), _id(library, colour_photos["black"])]
    _assert_hits(hits, _oracle(library, fake_encoder.text_vector("red"), 5, ids=sub_ids), library)
    # Relative and trailing-slash spellings mean the same folder.
    assert library.search("red", k=5, folder=str(sub) + "/") == hits
    assert library.search("red", k=5, folder=tmp_path / "nothing-here") == []


# -- query arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize("query, terms", [
    ("red + blue", [(1.0, "red"), (1.0, "blue")]),
    ("2:red + blue", [(2.0, "red"), (1.0, "blue")]),
    ("red + 0.5:blue - green", [(1.0, "red"), (0.5, "blue"), (-1.0, "green")]),
    ("- red", [(-1.0, "red")]),
    ("a red t-shirt - blue", [(1.0, "a red t-shirt"), (-1.0, "blue")]),
])
def test_arithmetic_matches_brute_force_on_the_combined_vector(library: Library, fake_encoder: FakeEncoder,
                                                               query: str, terms: list) -> None:
    expected = _unit(sum(w * fake_encoder.text_vector(t) for w, t in terms))
    vec = library.query_vector(query)
    np.testing.assert_allclose(vec, expected, atol=1e-6)
    _assert_hits(library.search(query, k=4), _oracle(library, expected, 4), library)


def test_red_plus_blue_ranks_red_and_blue_first(library: Library, colour_photos: dict[str, str]) -> None:
    assert {h.path for h in library.search("red + blue", k=2)} == {colour_photos["red"], colour_photos["blue"]}
    assert library.search("3:red + blue", k=1)[0].path == colour_photos["red"]
    assert library.search("red + 3:blue", k=1)[0].path == colour_photos["blue"]


def test_terms_that_cancel_are_a_query_error(library: Library) -> None:
    with pytest.raises(QueryError, match="cancel"):
        library.search("red - red")
    with pytest.raises(QueryError, match="cancel"):
        library.search("2:blue - blue - blue")


@pytest.mark.parametrize("query", ["", "   ", "red + ", "red -", "red + + blue", "red +  + blue", "2:red + -  blue"])
def test_malformed_queries_are_query_errors(library: Library, query: str) -> None:
    with pytest.raises(QueryError, match="empty"):
        library.search(query)


def test_words_with_hyphens_stay_words() -> None:
    assert parse_query("t-shirt", is_image_file=lambda s: False) == parse_query("t-shirt", is_image_file=lambda s: False)
    (term,) = parse_query("t-shirt", is_image_file=lambda s: False)
    assert term.text == "t-shirt" and term.weight == 1.0
    (term,) = parse_query("a 3-year-old child+dog", is_image_file=lambda s: False)
    assert term.text == "a 3-year-old child+dog"
    terms = parse_query("beach + sunset - people", is_image_file=lambda s: False)
    assert [(t.weight, t.text) for t in terms] == [(1.0, "beach"), (1.0, "sunset"), (-1.0, "people")]


def test_an_image_id_term_uses_the_stored_vector(library: Library, colour_photos: dict[str, str],
                                                 fake_encoder: FakeEncoder) -> None:
    blue = _id(library, colour_photos["blue"])
    stored = library.vectors([blue])[1][0]
    encoded = fake_encoder.images_encoded
    expected = _unit(stored + 0.5 * fake_encoder.text_vector("red"))
    np.testing.assert_allclose(library.query_vector(f"#{blue} + 0.5:red"), expected, atol=1e-6)
    assert fake_encoder.images_encoded == encoded  # no re-encoding
    _assert_hits(library.search(f"#{blue} + 0.5:red", k=3), _oracle(library, expected, 3), library)
    assert library.search(f"#{blue}", k=1)[0].id == blue
    with pytest.raises(QueryError, match="#?99999"):
        library.search("#99999")


def test_an_image_path_term_is_encoded(library: Library, colour_photos: dict[str, str], tmp_path: Path,
                                       fake_encoder: FakeEncoder) -> None:
    query = write_colour_photos(tmp_path / "queries", ["green"], ext=".png")["green"]
    image_vec = fake_encoder.image_vector(load_image(query))
    expected = _unit(image_vec - 0.2 * fake_encoder.text_vector("yellow"))
    np.testing.assert_allclose(library.query_vector(f"{query} - 0.2:yellow"), expected, atol=1e-6)
    hits = library.search(f"{query} - 0.2:yellow", k=3)
    assert hits[0].path == colour_photos["green"]
    _assert_hits(hits, _oracle(library, expected, 3), library)
    # A path that is not an image file is just words.
    (term,) = parse_query(str(tmp_path / "no-such.jpg"))
    assert term.text is not None


# -- image → image ---------------------------------------------------------------------

def test_a_query_photo_finds_its_colour_first(library: Library, colour_photos: dict[str, str], tmp_path: Path,
                                              fake_encoder: FakeEncoder) -> None:
    query = write_colour_photos(tmp_path / "queries", ["blue"], size=(30, 50), ext=".png")["blue"]
    hits = library.search_image(query, k=3)
    assert hits[0].path == colour_photos["blue"]
    _assert_hits(hits, _oracle(library, fake_encoder.image_vector(load_image(query)), 3), library)
    # Bytes and PIL images work too.
    assert library.search_image(Path(query).read_bytes(), k=1)[0].path == colour_photos["blue"]
    assert library.search_image(load_image(query), k=1)[0].path == colour_photos["blue"]


def test_an_indexed_photo_excludes_itself(library: Library, colour_photos: dict[str, str], tmp_path: Path) -> None:
    write_colour_photos(tmp_path / "photos" / "more", ["blue"], size=(30, 50), ext=".png")
    library.index(tmp_path / "photos")
    twin = str(tmp_path / "photos" / "more" / "blue.png")
    blue = _id(library, colour_photos["blue"])
    for query in (colour_photos["blue"], blue):
        hits = library.search_image(query, k=3)
        assert blue not in [h.id for h in hits]
        assert hits[0].path == twin
    assert library.search_image(colour_photos["blue"], k=1, exclude_self=False)[0].id == blue
    stored = library.vectors([blue])[1][0]
    _assert_hits(library.search_image(blue, k=4), _oracle(library, stored, 4, exclude=(blue,)), library)


def test_image_plus_text_modifier(library: Library, colour_photos: dict[str, str], fake_encoder: FakeEncoder) -> None:
    red = _id(library, colour_photos["red"])
    stored = library.vectors([red])[1][0]
    expected = _unit(stored + 2.0 * fake_encoder.text_vector("yellow"))
    hits = library.search_image(red, k=3, text="yellow", text_weight=2.0)
    assert hits[0].path == colour_photos["yellow"]
    _assert_hits(hits, _oracle(library, expected, 3, exclude=(red,)), library)


def test_image_search_honours_folder_and_min_score(library: Library, colour_photos: dict[str, str],
                                                   tmp_path: Path) -> None:
    black = _id(library, colour_photos["black"])
    hits = library.search_image(black, k=5, folder=tmp_path / "photos" / "sub")
    assert [h.path for h in hits] == [colour_photos["white"]]
    stored = library.vectors([black])[1][0]
    all_hits = library.search_image(black, k=8)
    cut = all_hits[1].score - 1e-6
    _assert_hits(library.search_image(black, k=8, min_score=cut),
                 _oracle(library, stored, 8, min_score=cut, exclude=(black,)), library)


# -- image → text ----------------------------------------------------------------------

def test_describe_ranks_the_collection(library: Library, colour_photos: dict[str, str],
                                       fake_encoder: FakeEncoder) -> None:
    texts = ["a red photo", "a blue photo", "a green photo", "grass", "the sky"]
    assert library.add_texts(texts + ["a red photo", "  ", ""]) == 5
    hits = library.describe(colour_photos["red"], k=3)
    assert hits[0].text == "a red photo"
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    image_vec = fake_encoder.image_vector(load_image(colour_photos["red"]))
    scores = np.stack([fake_encoder.text_vector(t) for t in texts]) @ image_vec
    assert [h.text for h in hits] == [texts[i] for i in np.argsort(-scores, kind="stable")[:3]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:3], atol=1e-5)
    # By id, from the stored vector; and a later add is seen at once.
    assert library.describe(_id(library, colour_photos["blue"]), k=1)[0].text == "a blue photo"
    library.add_texts(["yellow"])
    assert library.describe(_id(library, colour_photos["yellow"]), k=1)[0].text == "yellow"
    library.remove_texts(["yellow"])
    assert library.describe(_id(library, colour_photos["yellow"]), k=6)[-1].text != "yellow"
    assert "yellow" not in [h.text for h in library.describe(_id(library, colour_photos["yellow"]), k=10)]


def test_describe_with_an_empty_collection_says_to_add_texts(library: Library, colour_photos) -> None:
    with pytest.raises(QueryError, match="texts add"):
        library.describe(colour_photos["red"])


# -- stale entries ---------------------------------------------------------------------

def test_stale_index_ids_are_never_returned(library: Library, colour_photos: dict[str, str],
                                            fake_encoder: FakeEncoder) -> None:
    red = fake_encoder.text_vector("red")
    # An id the catalog never had, placed exactly on the query, and a row removed behind the index's back.
    library.vector_index.add(np.array([99_999], np.int64), red[None, :])
    library.catalog.remove_images([_id(library, colour_photos["red"])])
    hits = library.search("red", k=3)
    assert 99_999 not in [h.id for h in hits]
    assert colour_photos["red"] not in [h.path for h in hits]
    # Stale entries do not cost results: there are still k of them, in brute-force order.
    _assert_hits(hits, _oracle(library, red, 3), library)


# -- the parser on generated queries -------------------------------------------------------

_WORD = st.from_regex(r"[a-z](?:[a-z'-]{0,6}[a-z])?", fullmatch=True)
_TERM = st.tuples(st.sampled_from([1.0, -1.0]), st.sampled_from([None, 2.0, 0.5, 10.0]),
                  st.lists(_WORD, min_size=1, max_size=3).map(" ".join))


@settings(max_examples=200, deadline=None)
@given(st.lists(_TERM, min_size=1, max_size=4), st.sampled_from([" ", "  ", "\t"]))
def test_parse_query_reads_back_what_was_written(terms: list, space: str) -> None:
    query = ""
    for n, (sign, weight, words) in enumerate(terms):
        op = "-" if sign < 0 else "+"
        if n or sign < 0:
            query += f"{space}{op}{space}" if n else f"{op}{space}"
        query += (f"{weight:g}:" if weight is not None else "") + words
    parsed = parse_query(query, is_image_file=lambda s: False)
    assert [(t.weight, t.text) for t in parsed] == [(s * (w or 1.0), words) for s, w, words in terms]


def test_nearest_texts_labels_many_vectors_in_one_batch_and_image_refs_are_read_once(library) -> None:
    from clipsearch.errors import QueryError
    from clipsearch.search import image_ref

    assert image_ref("#42") == 42 and image_ref(" #7 ") == 7 and image_ref("#x") == "#x" and image_ref("a.jpg") == "a.jpg"
    with pytest.raises(QueryError, match="text collection is empty"):
        library.nearest_texts(np.eye(1, library.dim, dtype=np.float32))
    library.add_texts(["red", "blue", "green"])
    ids, vectors = library.vectors()
    labels = library.nearest_texts(vectors)
    paths = library.paths(ids.tolist())
    by_name = {os.path.basename(p): label for p, label in zip(paths, labels)}
    assert by_name["red.jpg"] == "red" and by_name["blue.jpg"] == "blue" and by_name["green.jpg"] == "green"
    assert library.paths([ids[0], 10**9]) == [paths[0], None]
    # "#ID" names an indexed photo wherever an image is taken.
    red = ids[paths.index(next(p for p in paths if p.endswith("red.jpg")))]
    assert library.describe(f"#{red}", k=1)[0].text == "red"
    assert library.search_image(f"#{red}", k=1)[0].id != red  # itself excluded, as for an int id


def test_names_image_file_judges_by_extension_alone(tmp_path: Path) -> None:
    """What servers refuse: an image term named by path, whether or not the file exists; #ids and filters pass."""
    real = tmp_path / "a.jpg"
    Image.new("RGB", (4, 4)).save(real)
    assert names_image_file(f"beach + {real}") and names_image_file("beach + /nowhere/b.png")
    assert names_image_file("/nowhere/b.heic place:Lisbon")
    assert not names_image_file("beach + #12 - people") and not names_image_file("place:Lisbon after:2019")
    assert not names_image_file("a photo of notes.txt")
    with pytest.raises(QueryError):
        names_image_file("beach near:abc")
