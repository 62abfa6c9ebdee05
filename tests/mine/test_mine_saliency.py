"""OnnxSaliency(rescale=True) / rescale_fixed_input: a fixed-size ONNX model run at another size."""

import numpy as np
import pytest
from conftest import resize_onnx_model

from weakpaste.core.errors import WeakpasteError
from weakpaste.mine.saliency import OnnxSaliency, make_saliency, rescale_fixed_input


def test_rescale_fixed_input_rewrites_shapes_and_resize_sizes(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = resize_onnx_model(tmp_path / "m.onnx")
    data, count = rescale_fixed_input(path.read_bytes(), 8)
    assert count == 1
    proto = onnx.load_model_from_string(data)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 1, 8, 8]
    assert numpy_helper.to_array(proto.graph.initializer[0]).tolist() == [1, 1, 8, 8]


def test_onnx_saliency_rescale_runs_at_the_new_size(tmp_path):
    pytest.importorskip("onnxruntime")
    path = resize_onnx_model(tmp_path / "m.onnx")
    img = np.zeros((20, 30, 3), np.uint8)
    img[5:10, 10:20] = 255
    small = make_saliency(str(path), size=8, rescale=True)
    assert small.size == 8 and small.key.endswith("isnet-8")
    sal = small(img)
    assert sal.shape == (20, 30) and sal.dtype == np.float32
    assert sal[7, 15] == pytest.approx(1.0) and sal[18, 2] == 0.0
    # Deterministic, and the same size needs no rewrite.
    np.testing.assert_array_equal(sal, small(img))
    assert OnnxSaliency(path, size=16, rescale=True).size == 16
    # Without rescale a different size is still refused.
    with pytest.raises(WeakpasteError, match="input is fixed at 16x16, so --saliency-size 8"):
        OnnxSaliency(path, size=8)


def test_rescale_fixed_input_refuses_dynamic_inputs():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g",
                              [x], [y])
    data = helper.make_model(graph).SerializeToString()
    with pytest.raises(WeakpasteError) as err:
        rescale_fixed_input(data, 8, "d.onnx")
    assert str(err.value) == ("d.onnx: only a fixed square input [1, 3, S, S] can be rescaled "
                              "(to a size >= 8); export the model with dynamic height/width "
                              "instead")
