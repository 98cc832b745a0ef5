// CPU-run CUDA harness: stands in for the CUDA header <cuda_fp16.h>; everything is in hk_sim.h.
#pragma once
#include "hk_sim.h"
