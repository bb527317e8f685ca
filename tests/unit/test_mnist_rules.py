"""MNIST source rules and transform: each rule fails on a broken input, naming file/field/rule."""

from __future__ import annotations

import numpy as np
import pytest

from flows.datasets import mnist
from flows.datasets.validation import DataValidationError
from tests.conftest import small_mnist, write_mnist_pickle


def _load(path, sha):
    raw, _ = mnist.read_verified(path, sha)
    splits = mnist.parse(raw, path)
    mnist.validate(splits, path)
    return splits


def _broken(tmp_path, mutate):
    splits = small_mnist()
    mutate(splits)
    path = tmp_path / "mnist.pkl.gz"
    return path, write_mnist_pickle(path, splits)


def test_well_formed_source_passes(tmp_path):
    path, sha = _broken(tmp_path, lambda s: None)
    assert set(_load(path, sha)) == {"train", "valid", "test"}


def test_wrong_hash_is_refused_before_unpickling(tmp_path):
    path, sha = _broken(tmp_path, lambda s: None)
    with pytest.raises(DataValidationError) as err:
        mnist.read_verified(path, "0" * 64)
    assert (err.value.field, err.value.file) == ("sha256", str(path))
    assert "matches the expected sha256" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match="field 'file' breaks rule 'exists'"):
        mnist.read_verified(tmp_path / "absent.pkl.gz", "0" * 64)


def test_truncated_file(tmp_path):
    path, _ = _broken(tmp_path, lambda s: None)
    path.write_bytes(path.read_bytes()[:300])
    sha = mnist.hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataValidationError, match="readable gzip-compressed pickle"):
        _load(path, sha)


def test_not_a_triple(tmp_path):
    path = tmp_path / "two.pkl.gz"
    sha = write_mnist_pickle(path, small_mnist()[:2])
    with pytest.raises(DataValidationError, match="field 'splits' breaks rule"):
        _load(path, sha)


@pytest.mark.parametrize(
    ("mutate", "field", "rule"),
    [
        (lambda s: s.__setitem__(0, (s[0][0][:, :700], s[0][1])), "train.images", "shape (n, 28x28)"),
        (lambda s: s.__setitem__(2, ((s[2][0] * 255).astype(np.uint8), s[2][1])), "test.images", "float pixels"),
        (lambda s: s[1][0].__setitem__((0, 5), np.nan), "valid.images", "no NaN or infinite pixel"),
        (lambda s: s[0][0].__setitem__((3, 3), 1.5), "train.images", "pixel values in [0, 1]"),
        (lambda s: s.__setitem__(0, (s[0][0], s[0][1][:-1])), "train.labels", "one label per image"),
        (lambda s: s[2][1].__setitem__(0, 10), "test.labels", "labels in 0..9"),
        (lambda s: s.__setitem__(1, (s[1][0], s[1][1].astype(np.float32))), "valid.labels", "integer labels"),
        (lambda s: s.__setitem__(2, (s[2][0][:0], s[2][1][:0])), "test.images", "at least one image"),
    ],
)
def test_each_rule_names_file_field_and_rule(tmp_path, mutate, field, rule):
    path, sha = _broken(tmp_path, mutate)
    with pytest.raises(DataValidationError) as err:
        _load(path, sha)
    assert (err.value.file, err.value.field, err.value.rule) == (str(path), field, rule)
    assert str(path) in str(err.value) and field in str(err.value) and rule in str(err.value)


def _source(rows: int) -> dict:
    return dict(zip(mnist.SOURCE_SPLITS, small_mnist(rows=rows)))


def test_transform_splits_and_normalizes():
    splits = _source(100)
    tables, manifest = mnist.transform(splits, seed=1, val_size=30)
    assert {k: t.num_rows for k, t in tables.items()} == {"train": 120, "val": 30, "test": 50}
    train = tables["train"].column("image").combine_chunks().flatten().to_numpy()
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1) < 1e-3  # normalized with train stats
    test = tables["test"].column("image").combine_chunks().flatten().to_numpy().reshape(-1, 784)
    norm = manifest["normalization"]
    # test is the official test split, in order, with the train statistics applied
    np.testing.assert_allclose(test, (splits["test"][0] - norm["mean"]) / norm["std"], rtol=1e-5, atol=1e-5)
    # val ∪ train is exactly the official train set (train + valid), nothing lost or duplicated
    labels = np.concatenate([tables[k].column("label").to_numpy() for k in ("train", "val")])
    source = np.concatenate([splits["train"][1], splits["valid"][1]])
    assert sorted(labels) == sorted(source)


def test_split_is_deterministic_by_seed():
    splits = _source(100)

    def val_images(seed):
        tables, _ = mnist.transform(splits, seed=seed, val_size=30)
        return tables["val"].column("image").combine_chunks().flatten().to_numpy()

    np.testing.assert_array_equal(val_images(7), val_images(7))
    assert not np.array_equal(val_images(7), val_images(8))


def test_val_size_must_fit():
    splits = _source(10)
    with pytest.raises(ValueError, match="val_size"):
        mnist.transform(splits, seed=1, val_size=15)


@pytest.mark.parametrize("chunk", [7, 2048])
def test_gather_is_the_concatenation_indexed(chunk):
    parts = [np.arange(12 * 3, dtype=np.float32).reshape(12, 3), -np.arange(5 * 3, dtype=np.float32).reshape(5, 3)]
    index = np.random.default_rng(0).permutation(17)
    np.testing.assert_array_equal(mnist._gather(parts, index, chunk=chunk), np.concatenate(parts)[index])


def test_shuffled_train_is_the_official_train_set_in_seeded_order():
    splits = _source(100)
    images, labels = mnist.shuffled_train(splits, seed=3)
    order = np.random.default_rng(3).permutation(150)
    np.testing.assert_array_equal(images, np.concatenate([splits["train"][0], splits["valid"][0]])[order])
    np.testing.assert_array_equal(labels, np.concatenate([splits["train"][1], splits["valid"][1]])[order])
    tables, _ = mnist.transform(splits, seed=3, val_size=30)  # val is the first 30 of that order
    np.testing.assert_array_equal(tables["val"].column("label").to_numpy(), labels[:30])


@pytest.mark.parametrize("eight_bit", [False, True])
def test_splits_are_written_a_block_at_a_time_with_the_whole_tables_values(tmp_path, monkeypatch, eight_bit):
    """The store writes a prepared split BLOCK_ROWS rows at a time, normalized into one reused buffer:
    the file holds exactly the values of the split built whole, a row group per block."""
    import pyarrow.parquet as pq

    from flows.datasets import store

    monkeypatch.setattr(mnist, "BLOCK_ROWS", 16)
    splits = _source(100)
    if eight_bit:
        splits = {k: (np.rint(x * 256).astype(np.uint8), y) for k, (x, y) in splits.items()}
    options = dict(seed=1, val_size=30, limit_rows=None, min_class_share=0.01, max_duplicate_fraction=0.5)
    _, prepared, manifest = mnist.prepare(splits, "mnist.pkl.gz", eight_bit=eight_bit, **options)
    path = store.write_version(tmp_path, "mnist", "v1", prepared, manifest)
    for name, split in prepared.items():
        written = pq.ParquetFile(f"{path}/{name}.parquet")
        assert written.metadata.num_row_groups == -(-split.num_rows // 16)
        assert written.read().equals(split.table()), name
    assert store.read_manifest(path)["splits"] == {"train": {"rows": 120}, "val": {"rows": 30}, "test": {"rows": 50}}
