// Fused CPU ops of the Mamba mixer around the selective scan (see mixer_ops.cpp).
#pragma once

#include <torch/extension.h>

namespace ssamba {

// Adds the mixer op (depthwise causal conv + SiLU) to the extension module.
void bind_mixer_ops(pybind11::module_& m);

}  // namespace ssamba
