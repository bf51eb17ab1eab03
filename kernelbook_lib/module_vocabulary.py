"""The operation vocabulary of PyTorch modules: the intrinsic difficulty level of each canonical
operation (:data:`OPERATION_LEVELS`) and the canonical operation of each ``nn`` layer class
(:data:`LAYER_OPERATIONS`).

Read by the static judge's module analyser (:mod:`kernelbook_lib.module_judge_facts`), its scoring
(:mod:`kernelbook_lib.static_judge`) and the kernel screen (:mod:`kernelbook_lib.screen_facts`).
"""

from __future__ import annotations

# --- the operation vocabulary ----------------------------------------------------------------
# Canonical operation name -> intrinsic difficulty level (0-8; 9-10 come from structure).


def _levels(level: int, names: str) -> dict[str, int]:
    return {name: level for name in names.split()}


OPERATION_LEVELS: dict[str, int] = {
    # 0: copies, views, casts, creation
    **_levels(
        0,
        "view reshape clone contiguous flatten unflatten ravel squeeze unsqueeze detach to type "
        "float half double int long bool bfloat16 cpu cuda identity view_as reshape_as expand "
        "expand_as type_as zeros ones zeros_like ones_like empty empty_like full full_like arange "
        "linspace tensor as_tensor from_numpy copy_ fill_ zero_ new_zeros new_ones new_empty "
        "new_full new_tensor rand randn rand_like randn_like randint requires_grad_ eye",
    ),
    # 1: layout / data movement
    **_levels(
        1,
        "permute transpose t cat concat concatenate stack hstack vstack split chunk narrow select "
        "index_select gather scatter scatter_add flip roll repeat repeat_interleave tile pad "
        "pixel_shuffle pixel_unshuffle channel_shuffle movedim unbind masked_select take tril "
        "triu diag diagonal index_add unfold_view",
    ),
    # 1: elementwise
    **_levels(
        1,
        "relu relu6 leaky_relu elu selu celu gelu silu swish mish sigmoid hardsigmoid logsigmoid "
        "tanh hardtanh hardswish hardshrink softshrink tanhshrink softsign softplus threshold "
        "prelu rrelu glu exp exp2 expm1 log log2 log10 log1p sqrt rsqrt abs neg negative "
        "reciprocal pow square sin cos tan asin acos atan atan2 sinh cosh erf erfc erfinv floor "
        "ceil round trunc frac sign sgn clamp clip clamp_min clamp_max add sub subtract mul "
        "multiply div divide true_divide floor_divide remainder fmod maximum minimum fmax fmin "
        "where masked_fill lerp addcmul addcdiv eq ne lt le gt ge logical_and logical_or "
        "logical_not logical_xor bitwise_and bitwise_or bitwise_xor bitwise_not isnan isinf "
        "nan_to_num dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout "
        "hypot copysign heaviside xlogy logit compare affine outer_add",
    ),
    # 2: gathers
    **_levels(2, "embedding one_hot"),
    # 3: plain reductions
    **_levels(
        3,
        "sum mean max min amax amin argmax argmin prod norm std var std_mean var_mean all any "
        "count_nonzero nansum nanmean vector_norm mse_loss l1_loss smooth_l1_loss huber_loss "
        "soft_margin_loss margin_ranking_loss hinge_embedding_loss adaptive_avg_pool1d "
        "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
        "adaptive_max_pool3d upsample_nearest",
    ),
    # 4: harder reductions, windows, scans, resampling
    **_levels(
        4,
        "median mode cumsum cumprod cummax cummin binary_cross_entropy "
        "binary_cross_entropy_with_logits kl_div poisson_nll_loss nll_loss cosine_similarity "
        "pairwise_distance cosine_embedding_loss triplet_margin_loss normalize dist matrix_norm "
        "avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d lp_pool1d lp_pool2d "
        "interpolate upsample upsample_bilinear dot inner outer embedding_bag",
    ),
    # 5: moderate
    **_levels(
        5,
        "softmax log_softmax softmin gumbel_softmax layer_norm batch_norm instance_norm "
        "rms_norm linear matmul mm bmm addmm baddbmm addbmm einsum tensordot mv cdist topk sort "
        "argsort kthvalue logsumexp affine_grid multi_margin_loss multilabel_margin_loss "
        "multilabel_soft_margin_loss",
    ),
    # 6: moderate, upper
    **_levels(
        6,
        "group_norm local_response_norm cross_entropy bilinear unfold fold grid_sample "
        "rnn_cell cholesky solve",
    ),
    # 7: complex
    **_levels(
        7,
        "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
        "scaled_dot_product_attention attention rnn lstm_cell gru_cell fft rfft irfft fft2 "
        "rfft2 irfft2 fftn ifft inverse det",
    ),
    # 8: complex, upper
    **_levels(8, "multihead_attention lstm gru svd qr stft ctc_loss"),
    # structure-driven; their own level is the top of the complex band
    **_levels(8, "transformer transformer_encoder transformer_decoder transformer_encoder_layer "
              "transformer_decoder_layer"),
}

# nn layer class -> canonical operation
LAYER_OPERATIONS: dict[str, str] = {
    "Identity": "identity", "Flatten": "flatten", "Unflatten": "unflatten",
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "ELU": "elu", "SELU": "selu",
    "CELU": "celu", "GELU": "gelu", "SiLU": "silu", "Mish": "mish", "Sigmoid": "sigmoid",
    "Hardsigmoid": "hardsigmoid", "LogSigmoid": "logsigmoid", "Tanh": "tanh",
    "Hardtanh": "hardtanh", "Hardswish": "hardswish", "Hardshrink": "hardshrink",
    "Softshrink": "softshrink", "Tanhshrink": "tanhshrink", "Softsign": "softsign",
    "Softplus": "softplus", "Threshold": "threshold", "PReLU": "prelu", "RReLU": "rrelu",
    "GLU": "glu", "Dropout": "dropout", "Dropout1d": "dropout1d", "Dropout2d": "dropout2d",
    "Dropout3d": "dropout3d", "AlphaDropout": "alpha_dropout",
    "FeatureAlphaDropout": "feature_alpha_dropout",
    "ZeroPad2d": "pad", "ConstantPad1d": "pad", "ConstantPad2d": "pad", "ConstantPad3d": "pad",
    "ReflectionPad1d": "pad", "ReflectionPad2d": "pad", "ReflectionPad3d": "pad",
    "ReplicationPad1d": "pad", "ReplicationPad2d": "pad", "ReplicationPad3d": "pad",
    "PixelShuffle": "pixel_shuffle", "PixelUnshuffle": "pixel_unshuffle",
    "ChannelShuffle": "channel_shuffle",
    "Embedding": "embedding", "EmbeddingBag": "embedding_bag",
    "MSELoss": "mse_loss", "L1Loss": "l1_loss", "SmoothL1Loss": "smooth_l1_loss",
    "HuberLoss": "huber_loss", "SoftMarginLoss": "soft_margin_loss",
    "MarginRankingLoss": "margin_ranking_loss", "HingeEmbeddingLoss": "hinge_embedding_loss",
    "BCELoss": "binary_cross_entropy", "BCEWithLogitsLoss": "binary_cross_entropy_with_logits",
    "KLDivLoss": "kl_div", "PoissonNLLLoss": "poisson_nll_loss", "NLLLoss": "nll_loss",
    "CosineSimilarity": "cosine_similarity", "PairwiseDistance": "pairwise_distance",
    "CosineEmbeddingLoss": "cosine_embedding_loss", "TripletMarginLoss": "triplet_margin_loss",
    "CrossEntropyLoss": "cross_entropy", "MultiMarginLoss": "multi_margin_loss",
    "MultiLabelMarginLoss": "multilabel_margin_loss",
    "MultiLabelSoftMarginLoss": "multilabel_soft_margin_loss", "CTCLoss": "ctc_loss",
    "AdaptiveAvgPool1d": "adaptive_avg_pool1d", "AdaptiveAvgPool2d": "adaptive_avg_pool2d",
    "AdaptiveAvgPool3d": "adaptive_avg_pool3d", "AdaptiveMaxPool1d": "adaptive_max_pool1d",
    "AdaptiveMaxPool2d": "adaptive_max_pool2d", "AdaptiveMaxPool3d": "adaptive_max_pool3d",
    "AvgPool1d": "avg_pool1d", "AvgPool2d": "avg_pool2d", "AvgPool3d": "avg_pool3d",
    "MaxPool1d": "max_pool1d", "MaxPool2d": "max_pool2d", "MaxPool3d": "max_pool3d",
    "LPPool1d": "lp_pool1d", "LPPool2d": "lp_pool2d",
    "Upsample": "upsample", "UpsamplingNearest2d": "upsample_nearest",
    "UpsamplingBilinear2d": "upsample_bilinear",
    "Softmax": "softmax", "Softmax2d": "softmax", "LogSoftmax": "log_softmax",
    "Softmin": "softmin",
    "LayerNorm": "layer_norm", "RMSNorm": "rms_norm", "BatchNorm1d": "batch_norm",
    "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm", "SyncBatchNorm": "batch_norm",
    "InstanceNorm1d": "instance_norm", "InstanceNorm2d": "instance_norm",
    "InstanceNorm3d": "instance_norm", "GroupNorm": "group_norm",
    "LocalResponseNorm": "local_response_norm",
    "Linear": "linear", "LazyLinear": "linear", "Bilinear": "bilinear",
    "Unfold": "unfold", "Fold": "fold",
    "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d", "LazyConv1d": "conv1d",
    "LazyConv2d": "conv2d", "LazyConv3d": "conv3d", "ConvTranspose1d": "conv_transpose1d",
    "ConvTranspose2d": "conv_transpose2d", "ConvTranspose3d": "conv_transpose3d",
    "MultiheadAttention": "multihead_attention", "RNN": "rnn", "LSTM": "lstm", "GRU": "gru",
    "RNNCell": "rnn_cell", "LSTMCell": "lstm_cell", "GRUCell": "gru_cell",
    "Transformer": "transformer", "TransformerEncoder": "transformer_encoder",
    "TransformerDecoder": "transformer_decoder",
    "TransformerEncoderLayer": "transformer_encoder_layer",
    "TransformerDecoderLayer": "transformer_decoder_layer",
}
