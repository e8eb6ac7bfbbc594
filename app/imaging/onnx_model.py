"""EfficientNet-Lite0 up to its global average pool, as an ONNX graph built from the published
weights with `onnx` alone (no torch).

The architecture is the one of `efficientnet_lite_pytorch` (EfficientNet-Lite0: MBConv blocks
without squeeze-and-excitation, ReLU6, TensorFlow's "SAME" padding computed for a 224 x 224
input, batch norm with eps 1e-3), whose `extract_features(x).mean((2, 3))` the `cnn` embedder
has always used. Each batch norm is folded into the convolution before it (inference only), so
the graph is convolutions, clips and additions. Pure: arrays in, serialised model out.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

INPUT_SIDE = 224
FEATURES = 1280
INPUT_NAME, OUTPUT_NAME = "pixels", "features"
_BATCH_NORM_EPS = 1e-3
_OPSET = 17


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    inputs: int
    outputs: int


# efficientnet_lite_builder.py: r1_k3_s11_e1_i32_o16, r2_k3_s22_e6_i16_o24, ... (Lite0 scales
# neither width nor depth, and keeps the 32-filter stem and the 1280-filter head).
_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


def _same_padding(kernel: int, stride: int, side: int) -> list[int]:
    """TensorFlow's "SAME" padding for a square input of `side`, as ONNX pads (top, left,
    bottom, right): the output is ceil(side / stride), the odd pixel goes after."""
    out = -(-side // stride)
    total = max((out - 1) * stride + kernel - side, 0)
    before, after = total // 2, total - total // 2
    return [before, before, after, after]


class _GraphBuilder:
    def __init__(self, weights: Mapping[str, NDArray[Any]]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.used: set[str] = set()
        self.clip_bounds = self._constant("relu6_min", np.float32(0.0))
        self.clip_max = self._constant("relu6_max", np.float32(6.0))

    def _constant(self, name: str, value: NDArray[Any] | np.generic) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _weight(self, name: str) -> NDArray[np.float32]:
        if name not in self.weights:
            raise ValueError(f"the weights have no {name}")
        self.used.add(name)
        return np.asarray(self.weights[name], dtype=np.float32)

    def conv_bn(
        self,
        source: str,
        conv: str,
        bn: str,
        *,
        stride: int = 1,
        side: int = INPUT_SIDE,
        groups: int = 1,
        relu6: bool = True,
    ) -> str:
        """Convolution `conv` (no bias) followed by batch norm `bn`, folded into one Conv."""
        kernel = self._weight(f"{conv}.weight")
        gamma, beta = self._weight(f"{bn}.weight"), self._weight(f"{bn}.bias")
        mean, var = self._weight(f"{bn}.running_mean"), self._weight(f"{bn}.running_var")
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + _BATCH_NORM_EPS)
        folded_kernel = (kernel * scale[:, None, None, None]).astype(np.float32)
        folded_bias = (beta - mean * scale).astype(np.float32)
        size = int(kernel.shape[-1])
        output = conv.replace(".", "_")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [
                    source,
                    self._constant(f"{output}_w", folded_kernel),
                    self._constant(f"{output}_b", folded_bias),
                ],
                [output],
                kernel_shape=[size, size],
                strides=[stride, stride],
                pads=_same_padding(size, stride, side),
                group=groups,
            )
        )
        if not relu6:
            return output
        self.nodes.append(
            helper.make_node("Clip", [output, self.clip_bounds, self.clip_max], [f"{output}_relu6"])
        )
        return f"{output}_relu6"

    def block(self, source: str, index: int, stage: _Stage, *, first: bool, side: int) -> str:
        """One MBConv block: expand (1x1), depthwise, project (1x1), skip when shapes allow."""
        prefix = f"_blocks.{index}"
        inputs = stage.inputs if first else stage.outputs
        stride = stage.stride if first else 1
        x = source
        if stage.expand != 1:
            x = self.conv_bn(x, f"{prefix}._expand_conv", f"{prefix}._bn0", side=side)
        x = self.conv_bn(
            x,
            f"{prefix}._depthwise_conv",
            f"{prefix}._bn1",
            stride=stride,
            side=side,
            groups=inputs * stage.expand,
        )
        x = self.conv_bn(x, f"{prefix}._project_conv", f"{prefix}._bn2", relu6=False)
        if stride == 1 and inputs == stage.outputs:
            self.nodes.append(helper.make_node("Add", [x, source], [f"{prefix}_out"]))
            x = f"{prefix}_out"
        return x


def build_feature_extractor(weights: Mapping[str, NDArray[Any]]) -> bytes:
    """The serialised ONNX model: input `pixels` (N x 3 x 224 x 224, float32, scaled as
    (pixel - 127) / 128), output `features` (N x 1280, float32, non-negative). Raises
    ValueError when `weights` lack a tensor or have one of the wrong shape."""
    graph = _GraphBuilder(weights)
    x = graph.conv_bn(INPUT_NAME, "_conv_stem", "_bn0", stride=2)
    side = INPUT_SIDE // 2
    index = 0
    for stage in _STAGES:
        for repeat in range(stage.repeats):
            x = graph.block(x, index, stage, first=repeat == 0, side=side)
            if repeat == 0:
                side = -(-side // stage.stride)
            index += 1
    x = graph.conv_bn(x, "_conv_head", "_bn1", side=side)
    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    graph.nodes.append(helper.make_node("Flatten", ["pooled"], [OUTPUT_NAME], axis=1))
    # The classifier (_fc) is not part of the features.
    unused = set(weights) - graph.used - {"_fc.weight", "_fc.bias"}
    if unused:
        raise ValueError(f"weights not used by the graph: {sorted(unused)[:5]}")
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "efficientnet_lite0_features",
            [
                helper.make_tensor_value_info(
                    INPUT_NAME, TensorProto.FLOAT, ["batch", 3, INPUT_SIDE, INPUT_SIDE]
                )
            ],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", FEATURES])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="image-similarity-service",
    )
    model.ir_version = 8  # onnxruntime reads IR 8 models with opset 17 everywhere
    onnx.checker.check_model(model, full_check=True)
    serialised: bytes = model.SerializeToString()
    return serialised
