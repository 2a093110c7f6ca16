import pickle

import numpy as np
import pytest
import torch

from sdlesson import data


def test_silhouettes_split_and_range():
    train, y_train = data.load_silhouettes("train")
    test, y_test = data.load_silhouettes("test")
    assert train.shape == (8716, 1, 28, 28) and test.shape == (1000, 1, 28, 28)
    assert train.min() == -1 and train.max() == 1
    assert torch.bincount(y_test).tolist() == [100] * 10
    # No image is in both splits, nor twice in one (the package repeats some).
    keys = [row.numpy().tobytes() for row in torch.cat([train, test])[:, 0]]
    assert len(set(keys)) == len(keys)


def test_silhouette_class_filter_keeps_original_labels():
    x, y = data.load_silhouettes("test", classes=("cat", "dog"))
    cat, dog = data.SILHOUETTE_CLASSES.index("cat"), data.SILHOUETTE_CLASSES.index("dog")
    assert len(x) == 200 and set(y.tolist()) == {cat, dog}
    with pytest.raises(ValueError, match="unknown silhouette classes \\['unicorn'\\]"):
        data.load_silhouettes(classes=("cat", "unicorn"))
    with pytest.raises(ValueError, match="split must be"):
        data.load_silhouettes("validation")


def test_pickle_reader_refuses_anything_but_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    import io

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr))).load(), arr)


def test_photo_is_the_cat_cropped_and_scaled():
    full = data.load_photo("chelsea", size=None)
    assert full.shape == (1, 3, 300, 451)
    small = data.load_photo("chelsea", size=64)
    assert small.shape == (1, 3, 64, 64) and -1 <= small.min() and small.max() <= 1
    with pytest.raises(ValueError, match="unknown photo 'camera'"):
        data.load_photo("camera")


def test_to_uint8_round_trip():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert data.to_uint8(x).tolist() == [[[[0, 128, 255]]]]


def test_from_float_undoes_to_float():
    from sdlesson.data import from_float, to_float

    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(from_float(to_float(images)), images)
    assert from_float(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped to [-1, 1] first
