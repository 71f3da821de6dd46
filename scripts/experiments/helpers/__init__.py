"""Code the experiments share: the depthwise-convolution variants compared by layer_micro."""
