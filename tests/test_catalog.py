"""The SQLite catalog: schema version, image rows and vectors, folder queries, texts."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipsearch import CatalogError, SchemaVersionError
from clipsearch.catalog import SCHEMA_VERSION, Catalog, NewImage

DIM = 4


def _vec(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def _image(path: str, seed: int = 0, size: int = 100) -> NewImage:
    rng = np.random.default_rng(seed)
    return NewImage(path, size, 1_000_000 + seed, _vec(*rng.normal(size=DIM)), width=64, height=48)


@pytest.fixture
def catalog(tmp_path: Path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    yield cat
    cat.close()


def test_schema_version_is_stored(tmp_path: Path, catalog: Catalog) -> None:
    assert catalog.get_meta("schema_version") == str(SCHEMA_VERSION)
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    db.close()


def test_newer_schema_version_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(SchemaVersionError) as err:
        Catalog(path)
    message = str(err.value)
    assert str(path) in message and str(SCHEMA_VERSION + 1) in message and "upgrade clipsearch" in message
    # Refusing must not have rewritten the version.
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION + 1),)
    db.close()


@pytest.mark.parametrize("content", [b"this is not a database, just text\n" * 100, b"\x00" * 4096])
def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=str(path)):
        Catalog(path)


def test_add_get_and_vectors_round_trip(catalog: Catalog) -> None:
    images = [_image(f"/photos/{i}.jpg", seed=i) for i in range(3)]
    ids = catalog.add_images(images)
    assert len(set(ids)) == 3
    assert catalog.count() == 3
    row = catalog.find_path("/photos/1.jpg")
    assert row is not None and row.id == ids[1] and row.status == "ok"
    assert (row.size, row.mtime_ns, row.width, row.height) == (100, 1_000_001, 64, 48)
    assert catalog.get_image(ids[2]).path == "/photos/2.jpg"
    assert catalog.get_image(10_000) is None
    vecs = catalog.vectors_for(ids, DIM)
    for i, image in zip(ids, images):
        np.testing.assert_array_equal(vecs[i], image.vector)
    # All vectors, in id order, in small batches.
    blocks = list(catalog.iter_vectors(DIM, batch=2))
    assert [len(b[0]) for b in blocks] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), sorted(ids))
    np.testing.assert_array_equal(catalog.ok_ids(), sorted(ids))


def test_replacing_a_path_gives_a_new_id_and_vector(catalog: Catalog) -> None:
    (old,) = catalog.add_images([_image("/p/a.jpg", seed=1)])
    replacement = _image("/p/a.jpg", seed=2, size=555)
    (new,) = catalog.add_images([replacement])
    assert new != old
    assert catalog.count(None) == 1
    assert catalog.get_image(old) is None
    assert catalog.find_path("/p/a.jpg").size == 555
    vecs = catalog.vectors_for([old, new], DIM)
    assert list(vecs) == [new]
    np.testing.assert_array_equal(vecs[new], replacement.vector)


def test_remove_deletes_rows_and_vectors(catalog: Catalog) -> None:
    ids = catalog.add_images([_image(f"/p/{i}.jpg", seed=i) for i in range(4)])
    assert catalog.remove_images(ids[1:3]) == 2
    assert sorted(catalog.get_images(ids)) == [ids[0], ids[3]]
    assert sorted(catalog.vectors_for(ids, DIM)) == [ids[0], ids[3]]
    assert catalog.count() == 2


def test_ids_are_never_reused(catalog: Catalog) -> None:
    ids = catalog.add_images([_image("/p/a.jpg"), _image("/p/b.jpg")])
    catalog.remove_images(ids)
    (again,) = catalog.add_images([_image("/p/c.jpg")])
    assert again > max(ids)
    catalog.add_failures([("/p/bad.jpg", 1, 2, "not an image file")])
    catalog.remove_images([catalog.find_path("/p/bad.jpg").id])
    (last,) = catalog.add_images([_image("/p/d.jpg")])
    assert last > again + 1


def test_failures_are_recorded_and_replaced(catalog: Catalog) -> None:
    catalog.add_images([_image("/p/a.jpg")])
    catalog.add_failures([("/p/a.jpg", 7, 8, "truncated"), ("/p/b.jpg", 9, 10, "not an image file")])
    assert catalog.count("ok") == 0 and catalog.count("error") == 2
    assert [(r.path, r.error) for r in catalog.failures()] == [("/p/a.jpg", "truncated"),
                                                               ("/p/b.jpg", "not an image file")]
    assert catalog.ok_ids().size == 0
    assert list(catalog.iter_vectors(DIM)) == []
    # A file that decodes now replaces its failure row.
    catalog.add_images([_image("/p/b.jpg")])
    assert [r.path for r in catalog.failures()] == ["/p/a.jpg"]


def test_folder_queries_do_not_match_sibling_prefixes(catalog: Catalog) -> None:
    paths = ["/a/b/1.jpg", "/a/b/deep/2.jpg", "/a/bc/3.jpg", "/a/b-c/4.jpg", "/a/b.d/5.jpg", "/a/b0/6.jpg",
             "/a/1.jpg", "/a/b"]
    ids = dict(zip(paths, catalog.add_images([_image(p, seed=i) for i, p in enumerate(paths)])))
    catalog.add_failures([("/a/b/bad.jpg", 1, 1, "nope")])
    expected = {"/a/b/1.jpg", "/a/b/deep/2.jpg"}
    assert set(catalog.images_under("/a/b")) == expected | {"/a/b/bad.jpg"}
    assert set(catalog.images_under("/a/b/")) == expected | {"/a/b/bad.jpg"}
    # ids_under: indexed images only.
    assert sorted(catalog.ids_under("/a/b").tolist()) == sorted(ids[p] for p in expected)
    assert sorted(catalog.ids_under("/a/bc").tolist()) == [ids["/a/bc/3.jpg"]]
    assert len(catalog.ids_under("/a")) == len(paths)
    assert len(catalog.ids_under("/")) == len(paths)
    assert catalog.ids_under("/a/b/deep/2.jpg").size == 0  # a file is not a folder


def test_adding_texts_is_idempotent(catalog: Catalog) -> None:
    vecs = np.stack([_vec(1, 0, 0, 0), _vec(0, 1, 0, 0)])
    assert catalog.add_texts(["a red car", "a dog"], vecs) == 2
    assert catalog.add_texts(["a dog", "a cat"], np.stack([_vec(0, 1, 0, 0), _vec(0, 0, 1, 0)])) == 1
    assert catalog.texts() == ["a red car", "a dog", "a cat"]
    assert catalog.text_count() == 3
    ids, texts, tvecs = catalog.text_vectors(DIM)
    assert texts == ["a red car", "a dog", "a cat"] and len(set(ids.tolist())) == 3
    np.testing.assert_array_equal(tvecs[1], _vec(0, 1, 0, 0))
    assert catalog.remove_texts(["a dog", "never added"]) == 1
    assert catalog.texts() == ["a red car", "a cat"]
    assert catalog.text_vectors(DIM)[2].shape == (2, DIM)


def test_empty_text_collection_has_the_right_shape(catalog: Catalog) -> None:
    ids, texts, vecs = catalog.text_vectors(DIM)
    assert (len(ids), texts, vecs.shape) == (0, [], (0, DIM))


def test_transactions_are_all_or_nothing_and_bump_the_generation(catalog: Catalog) -> None:
    gen = catalog.generation
    catalog.add_images([_image("/p/a.jpg")])
    assert catalog.generation == gen + 1
    with pytest.raises(RuntimeError):
        with catalog.transaction():
            catalog.add_images([_image("/p/b.jpg")])
            catalog.add_failures([("/p/c.jpg", 1, 1, "x")])
            raise RuntimeError("crash")
    assert catalog.find_path("/p/b.jpg") is None and catalog.find_path("/p/c.jpg") is None
    assert catalog.generation == gen + 1


def test_metadata_persists_across_reopen(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    cat.set_meta("model", "ViT-B-32")
    cat.set_meta("roots", ["/a", "/b"])
    cat.add_images([_image("/a/x.jpg")])
    cat.close()
    cat = Catalog(tmp_path / "c.sqlite")
    assert cat.get_meta("model") == "ViT-B-32"
    assert cat.get_meta("roots") == '["/a", "/b"]'
    assert cat.get_meta("missing", "dflt") == "dflt"
    assert cat.count() == 1
    cat.close()


def test_images_version_tells_rows_added_from_rows_rewritten(catalog: Catalog) -> None:
    """Every write to image rows changes the version; only writes to rows already there change `rewritten`
    (what lets a cache of image columns read the new rows alone: clipsearch.filter_columns)."""
    def step(write) -> tuple[bool, bool]:
        before = catalog.images_version
        write()
        after = catalog.images_version
        return after.changes != before.changes, after.rewritten != before.rewritten

    ids = []
    assert step(lambda: ids.extend(catalog.add_images([_image("/p/a.jpg"), _image("/p/b.jpg", 1)]))) == (True, False)
    assert step(lambda: catalog.add_failures([("/p/bad.jpg", 1, 0, "not an image")])) == (True, False)
    assert step(lambda: catalog.copy_images([(ids[0], "/p/copy.jpg", 100, 0, {})])) == (True, False)
    assert step(lambda: catalog.add_images([_image("/p/a.jpg", 2)])) == (True, True)  # a replaced file
    assert step(lambda: catalog.add_failures([("/p/b.jpg", 1, 0, "now broken")])) == (True, True)
    assert step(lambda: catalog.copy_images([(catalog.find_path("/p/a.jpg").id, "/p/copy.jpg", 100, 0, {})])) \
        == (True, True)  # a copy over a copy
    assert step(lambda: catalog.set_facts([])) == (False, False)  # nothing written
    assert step(lambda: catalog.rename_path("/p/copy.jpg", "/q/copy.jpg")) == (True, True)
    assert step(lambda: catalog.remove_images([catalog.find_path("/q/copy.jpg").id])) == (True, True)
